/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Record layouts shared by the kernel sensor (sensor.bpf.c) and its Go
 * decoder (capture/ebpf_record.go). bpf2go turns the ev_* structs into Go
 * types; a test pins the decoder's offsets to them, so a change here that is
 * not mirrored in Go fails `go test` instead of corrupting events.
 *
 * Every record starts with struct ev_hdr. Records are little-endian and
 * naturally aligned; variable-length data follows the fixed part of an exec
 * record, in the order exe, cwd, tty, argv.
 */
#ifndef DAEMONEYE_SENSOR_H
#define DAEMONEYE_SENSOR_H

enum ev_kind {
	EV_FORK = 1,
	EV_EXEC = 2,
	EV_EXIT = 3,
	EV_CONNECT = 4,
	EV_ACCEPT = 5,
	EV_CLOSE = 6,
};

/* ev_hdr.flags */
enum ev_flag {
	EVF_ARGV_TRUNC = 1 << 0, /* argv longer than argv_max */
	EVF_EXE_TRUNC = 1 << 1,  /* exe path deeper/longer than the walk allows */
	EVF_CWD_TRUNC = 1 << 2,  /* cwd path deeper/longer than the walk allows */
	EVF_TTY_PTS = 1 << 3,    /* tty is a unix98 pty slave: name is pts/<tty_index> */
	EVF_ARGV_FAULT = 1 << 4, /* argv pages could not be read */
	EVF_EXE_DELETED = 1 << 5, /* exe dentry unhashed: deleted or memfd */
};

/* Causes counted in the drops map; the Go side reports them all as ring_full. */
enum drop_cause {
	DROP_RING_EXEC = 0,
	DROP_RING_SMALL = 1, /* fork, exit and connection records */
	DROP_MAX = 2,
};

/* Compile-time capacities. argv_max (rodata) is clamped to ARGV_CAP. */
#define ARGV_CAP 32768
#define PATH_CAP 4096   /* PATH_MAX: longer paths are cut at the root end */
#define PATH_DEPTH 64   /* dentries walked per path, mounts included */
#define TTY_CAP 64      /* sizeof(tty_struct.name) */
#define DATA_HEAD 16384 /* room for exe + cwd + tty before argv */
#define EXEC_DATA (DATA_HEAD + ARGV_CAP)

struct ev_hdr {
	__u8 kind;
	__u8 flags;
	__u16 _pad0;
	__u32 pid;       /* tgid */
	__u64 start_ns;  /* group leader's start_boottime */
	__u64 time_ns;   /* bpf_ktime_get_boot_ns() */
	__u32 ppid;      /* real parent's tgid (fork, exec) */
	__u32 _pad1;
	__u64 pstart_ns; /* real parent's group leader start_boottime */
	char comm[16];
};

struct ev_exit {
	struct ev_hdr h;
	__u32 code; /* wait status: (status << 8) | core(0x80) | signal */
	__u32 _pad;
};

struct ev_conn {
	struct ev_hdr h;
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 sport;  /* local port, host order */
	__u16 dport;  /* remote port, host order */
	__u16 _pad;
	__u8 saddr[16]; /* local address; first 4 bytes for AF_INET */
	__u8 daddr[16]; /* remote address */
};

struct ev_exec {
	struct ev_hdr h;
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 egid;
	__u64 cgroup_id;
	__u32 pidns;
	__u32 netns;
	__u32 mntns;
	__u32 tty_index;
	__u16 exe_len;
	__u16 cwd_len;
	__u16 tty_len;
	__u16 argv_len;
	/* exe, cwd, tty, argv: exe_len + cwd_len + tty_len + argv_len bytes */
	char data[EXEC_DATA];
};

#endif
