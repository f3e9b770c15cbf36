/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Record layouts shared by the kernel sensor (sensor.bpf.c) and its Go
 * decoder (capture/ebpf_record.go). bpf2go turns the ev_* structs into Go
 * types; a test pins the decoder's offsets to them, so a change here that is
 * not mirrored in Go fails `go test` instead of corrupting events.
 *
 * Every record starts with struct ev_hdr. Records are little-endian and
 * naturally aligned; variable-length data follows the fixed part of an exec
 * record, in the order exe, cwd, tty, argv, env, and of a file record, in
 * the order path, path2, base, base2.
 *
 * Focused trace: a process in the traced map carries its trace's tag in
 * ev_hdr.trace on every record (fork, exec, exit, connections, and the
 * focused-only file and socket records). Userspace maps the tag to the
 * trace id and numbers the trace's events.
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
	/* Focused trace only: written for traced processes. */
	EV_FILE_OPEN = 7,	 /* open, creat, openat, openat2 returned */
	EV_FILE_RENAME = 8,	 /* rename, renameat, renameat2 returned */
	EV_FILE_UNLINK = 9,	 /* unlink, unlinkat returned */
	EV_SOCKET = 10,		 /* socket(2) returned */
	EV_CONNECT_RESULT = 16, /* a connect the TCP state machine does not report: UDP, failures */
};

/* ev_hdr.flags */
enum ev_flag {
	EVF_ARGV_TRUNC = 1 << 0, /* argv longer than argv_max */
	EVF_EXE_TRUNC = 1 << 1,  /* exe path deeper/longer than the walk allows */
	EVF_CWD_TRUNC = 1 << 2,  /* cwd path deeper/longer than the walk allows */
	EVF_TTY_PTS = 1 << 3,    /* tty is a unix98 pty slave: name is pts/<tty_index> */
	EVF_ARGV_FAULT = 1 << 4, /* argv pages could not be read */
	EVF_EXE_DELETED = 1 << 5, /* exe dentry unhashed: deleted or memfd */
	EVF_ENV_TRUNC = 1 << 6,	  /* environment longer than the trace's env cap */
	EVF_ENV_FAULT = 1 << 7,	  /* environment pages could not be read */
};

/* ev_hdr.flags of file records (EV_FILE_*). */
enum evf_file {
	EVF_PATH_FAULT = 1 << 0,  /* path could not be read from user memory */
	EVF_PATH2_FAULT = 1 << 1, /* second path could not be read */
	EVF_BASE_TRUNC = 1 << 2,  /* base cut at the root end (see EVF_CWD_TRUNC) */
	EVF_BASE2_TRUNC = 1 << 3,
	EVF_BASE_FAULT = 1 << 4,  /* the dirfd of a relative path is not an open file */
	EVF_BASE2_FAULT = 1 << 5,
};

/* Causes counted in the drops map; the Go side reports them all as ring_full. */
enum drop_cause {
	DROP_RING_EXEC = 0,
	DROP_RING_SMALL = 1, /* fork, exit and connection records */
	DROP_TRACE_FULL = 2, /* a traced process's child did not fit the traced map */
	DROP_RING_TRACE = 3, /* focused file and socket records */
	DROP_MAX = 4,
};

/*
 * Focused trace. A traced process is a traced map entry keyed by tgid; its
 * trace is a trace_cfg slot, tag % MAX_TRACES, live while the slot holds the
 * same tag. Tags are never reused by one loader, so a record or a map entry
 * left over from a stopped trace can never be taken for a later one.
 */
#define MAX_TRACES 64		/* power of two */
#define TRACED_MAX 16384	/* traced processes on one host */
#define DEPTH_UNLIMITED 0xffffffff

struct traced_proc {
	__u32 tag;
	__u32 depth; /* levels of descendants still to trace; DEPTH_UNLIMITED never counts down */
};

enum trace_flag {
	TRF_FILES = 1 << 0,    /* file open/create/rename/unlink */
	TRF_NET = 1 << 1,      /* socket create, connect results */
	TRF_CMDLINES = 1 << 2, /* environment snapshot at exec */
};

struct trace_cfg {
	__u32 tag;	/* 0: slot free */
	__u32 flags;	/* enum trace_flag */
	__u32 env_max;	/* environment bytes per exec, <= ENV_CAP */
	__u32 rate_max; /* focused records per second let through; 0: no limit */
	/* The kernel-side valve: a coarse one-second window, so that a traced
	 * process flooding syscalls cannot fill the ring the baseline shares.
	 * Userspace samples precisely; this only bounds the worst case. */
	__u64 window_ns;
	__u64 window_n;
	__u64 dropped; /* focused records the valve refused */
};

/* Compile-time capacities. argv_max (rodata) is clamped to ARGV_CAP. */
#define ARGV_CAP 32768
#define PATH_CAP 4096   /* PATH_MAX: longer paths are cut at the root end */
#define PATH_DEPTH 64   /* dentries walked per path, mounts included */
#define TTY_CAP 64      /* sizeof(tty_struct.name) */
#define DATA_HEAD 16384 /* room for exe + cwd + tty before argv */
#define ENV_CAP 16384
#define EXEC_DATA (DATA_HEAD + ARGV_CAP + ENV_CAP)
#define FILE_HEAD 16384 /* path + path2 + base + base2 fit: each < PATH_CAP */
#define FILE_DATA (FILE_HEAD + PATH_CAP)

struct ev_hdr {
	__u8 kind;
	__u8 flags;
	__u16 _pad0;
	__u32 pid;       /* tgid */
	__u64 start_ns;  /* group leader's start_boottime */
	__u64 time_ns;   /* bpf_ktime_get_boot_ns() */
	__u32 ppid;      /* real parent's tgid (fork, exec) */
	__u32 trace;     /* trace tag of a traced process; 0 when not traced */
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
	__u16 env_len;  /* traced processes only */
	__u16 _pad;
	__u32 exe_dev;  /* kernel dev_t (major << 20 | minor) of the exe's filesystem */
	__u64 exe_ino;
	__u64 exe_ctime_ns; /* the exe's version: its ctime changes on every write */
	__s64 exe_size;
	/* exe, cwd, tty, argv, env: exe_len + cwd_len + tty_len + argv_len + env_len bytes */
	char data[EXEC_DATA];
};

/*
 * A traced process's file syscall, written when it returns. Paths are as the
 * process passed them; a relative one comes with its base: the directory it
 * was resolved from (the cwd or the dirfd's path), resolved like exe paths.
 */
struct ev_file {
	struct ev_hdr h;
	__s64 result;	/* the syscall's return: an fd, 0, or -errno */
	__u64 flags;	/* open flags, renameat2 flags or unlinkat flags */
	__u64 ino;	/* inode of the file an open returned */
	__u32 dev;	/* its filesystem's kernel dev_t */
	__u32 mode;	/* open mode argument */
	__u16 path_len;
	__u16 path2_len; /* rename target */
	__u16 base_len;
	__u16 base2_len;
	char data[FILE_DATA];
};

/*
 * A traced process's socket(2), or a connect the TCP state machine does not
 * report (UDP, a TCP connect that failed). The tuple is the socket's when the
 * kernel has one, else the destination the process asked for.
 */
struct ev_sock {
	struct ev_hdr h;
	__s64 result;
	__s32 domain; /* socket(2) domain / the socket's family */
	__s32 type;   /* socket(2) type with its flags / the socket's type */
	__s32 proto;
	__u16 family; /* of the tuple: AF_INET, AF_INET6, 0 when none */
	__u16 sport;
	__u16 dport;
	__u16 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 _pad2;
};

#endif
