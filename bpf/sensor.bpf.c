// SPDX-License-Identifier: GPL-2.0-only
/*
 * DaemonEye passive baseline sensor.
 *
 * Hooks are BTF raw tracepoints (tp_btf) only: on our kernels kprobes are not
 * built in and fentry/fexit and BPF-LSM are refused. Records go to one BPF
 * ring buffer and are decoded by capture/ebpf_record.go; their layouts live
 * in sensor.h.
 *
 * Nothing here may block or slow the traced host noticeably: every program
 * filters first, uses a bounded amount of work, and when the ring has no room
 * it drops the record and counts the drop instead of waiting.
 *
 * Focused trace: processes in the traced map (a root put there by userspace
 * and the descendants handle_fork adds, up to the trace's depth) also get
 * file and socket records from sys_exit and an environment snapshot at exec.
 * Everything trace-related sits behind traces_active, so while no trace
 * runs the host pays one load of a global per hook; while one runs, an
 * untraced process pays one hash lookup, and only on the few syscalls
 * the trace records.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "sensor.h"

char LICENSE[] SEC("license") = "GPL";

/* Not in BTF (macros). Stable for many kernel releases. */
#define AF_INET 2
#define AF_INET6 10
#define SIGNAL_GROUP_EXIT 0x00000004
#define ECONNABORTED 103
#define AT_FDCWD -100
#define O_WRONLY 01
#define O_CREAT 0100
#define O_TRUNC 01000
#define TS_COMPAT 0x0002 /* x86 thread_info.status: a 32-bit syscall is running */

/* Set by the loader (Options.ArgvMaxBytes); clamped to ARGV_CAP. */
const volatile __u32 argv_max = 4096;

/*
 * Set by the loader: how much unread data makes a record wake the reader.
 * Waking a sleeping reader from BPF costs about 10 us per record on our VMs
 * (irq_work through the hypervisor), several times what the programs cost,
 * so records are submitted without a wakeup and the reader polls on a short
 * timer; only a burst that fills the ring past this mark wakes it early.
 */
const volatile __u64 wake_bytes = 1 << 20;

/*
 * Number of live traces, written by userspace (capture/trace_linux.go).
 * Zero keeps every trace path to this one load.
 */
volatile __u32 traces_active;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* replaced by Options.RingBytes at load */
} events SEC(".maps");

/* Reservation failures per cause, per CPU so counting never contends. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/*
 * Where paths are assembled leaf first; the extra 256 bytes let a masked
 * offset plus a NAME_MAX component stay in bounds.
 */
struct pathbuf {
	char buf[PATH_CAP + 256];
	__u32 pos; /* start of the path in buf, see path_resolve */
};

/*
 * An exec record is built here and then copied to the ring with its real
 * length, so the ring holds compact records while the program has room for
 * the largest argv.
 */
struct scratch {
	struct ev_exec ev;
	struct pathbuf pb;
	/* Unused: names the fixed-size record types in the object's BTF (BTF
	 * keeps only types reachable from maps and program signatures), so
	 * bpf2go can mirror them in Go for the decoder's layout test. */
	struct ev_exit btf_exit;
	struct ev_conn btf_conn;
	struct ev_sock btf_sock;
	struct traced_proc btf_traced;
};

/*
 * One slot per CPU, indexed by bpf_get_smp_processor_id(). Not a PERCPU_ARRAY
 * because per-CPU values are capped at 32 KiB. Sharing a slot is safe: the
 * scheduler tracepoints call us with preemption disabled, and the kernel
 * does not re-enter a program that is already running on this CPU.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* replaced by the number of possible CPUs at load */
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

enum own_state {
	OWN_CONNECTING = 1, /* SYN_SENT seen in the connecting process */
	OWN_CONNECTED = 2,  /* connect reported */
	OWN_ACCEPTED = 3,   /* accept reported */
	OWN_FAILED = 4,	    /* a traced connect's failure reported at TCP_CLOSE */
};

/*
 * Owner of a TCP socket we reported, keyed by the struct sock address. The
 * state transitions after connect() and all of them after accept() run in
 * softirq where the current task is unrelated, so the owner is remembered
 * from process context. LRU: a socket we never see close cannot leak an
 * entry forever.
 */
struct sock_owner {
	__u32 pid;
	__u32 state;
	__u32 trace; /* the owner's trace tag when it connected or accepted */
	__u32 _pad0;
	__u64 start_ns;
	char comm[16];
	/* The tuple as reported at connect/accept. By the time a socket
	 * reaches TCP_CLOSE the kernel may have released its local port
	 * (skc_num reads 0), so close reports this copy. */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_owner);
} socks SEC(".maps");

/* Traced processes: tgid -> trace tag and remaining depth. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TRACED_MAX);
	__type(key, __u32);
	__type(value, struct traced_proc);
} traced SEC(".maps");

/* Live traces by slot (tag % MAX_TRACES). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TRACES);
	__type(key, __u32);
	__type(value, struct trace_cfg);
} trace_cfgs SEC(".maps");

/*
 * The file record of the sys_exit program is built here. Per CPU and used
 * by that program alone: the kernel does not run a program again on a CPU
 * where it is already running (it counts a recursion miss instead), and the
 * program cannot migrate, so nothing else can touch the slot while it is
 * built, even where syscall tracepoints run preemptible. Under the 32 KiB
 * limit of per-CPU values.
 */
struct fscratch {
	struct ev_file ev;
	struct pathbuf pb;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fscratch);
} fscratch SEC(".maps");

/*
 * Submit flags for a record of size bytes. pending is the unread data
 * including the record. Only the record that crosses the mark wakes: the
 * ones after it find the reader awake already.
 */
static __always_inline __u64 wake_flags(__u64 pending, __u64 size)
{
	if (pending >= wake_bytes && pending - size < wake_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

/* Submit a reserved record, waking the reader only when due. */
static __always_inline void submit(void *rec, __u64 size)
{
	bpf_ringbuf_submit(rec, wake_flags(bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA), size));
}

static __always_inline void count_drop(__u32 cause)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &cause);
	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* struct inode's ctime before 6.6 (i_ctime) and in 6.6-6.10 (__i_ctime);
 * later kernels keep i_ctime_sec and i_ctime_nsec. */
struct inode___pre66 {
	struct timespec64 i_ctime;
} __attribute__((preserve_access_index));
struct inode___66 {
	struct timespec64 __i_ctime;
} __attribute__((preserve_access_index));

static __always_inline __u64 inode_ctime_ns(struct inode *ino)
{
	/* Bit 31 of i_ctime_nsec is a flag of multigrain timestamps
	 * (I_CTIME_QUERIED); nanoseconds fit in 30 bits. */
	if (bpf_core_field_exists(ino->i_ctime_sec))
		return (__u64)BPF_CORE_READ(ino, i_ctime_sec) * 1000000000ULL +
		       (BPF_CORE_READ(ino, i_ctime_nsec) & ((1U << 30) - 1));
	struct inode___66 *i66 = (void *)ino;
	if (bpf_core_field_exists(i66->__i_ctime))
		return (__u64)BPF_CORE_READ(i66, __i_ctime.tv_sec) * 1000000000ULL + BPF_CORE_READ(i66, __i_ctime.tv_nsec);
	struct inode___pre66 *old = (void *)ino;
	return (__u64)BPF_CORE_READ(old, i_ctime.tv_sec) * 1000000000ULL + BPF_CORE_READ(old, i_ctime.tv_nsec);
}

/* Process identity: tgid and the group leader's start, as /proc shows them. */
static __always_inline void fill_proc(struct ev_hdr *h, struct task_struct *t)
{
	h->pid = BPF_CORE_READ(t, tgid);
	h->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
}

static __always_inline void fill_parent(struct ev_hdr *h, struct task_struct *t)
{
	struct task_struct *rp = BPF_CORE_READ(t, real_parent);

	h->ppid = BPF_CORE_READ(rp, tgid);
	h->pstart_ns = BPF_CORE_READ(rp, group_leader, start_boottime);
}

static __always_inline void fill_hdr(struct ev_hdr *h, __u8 kind)
{
	h->kind = kind;
	h->flags = 0;
	h->_pad0 = 0;
	h->trace = 0;
	h->ppid = 0;
	h->pstart_ns = 0;
	h->time_ns = bpf_ktime_get_boot_ns();
}

/* The live trace of a traced map entry, or NULL when its trace stopped. */
static __always_inline struct trace_cfg *trace_cfg_of(const struct traced_proc *tr)
{
	__u32 tag = tr->tag;
	__u32 slot = tag & (MAX_TRACES - 1);
	struct trace_cfg *c = bpf_map_lookup_elem(&trace_cfgs, &slot);

	if (!c || !tag || c->tag != tag)
		return NULL;
	return c;
}

/* The live trace of process tgid, or NULL. */
static __always_inline struct trace_cfg *trace_of(__u32 tgid)
{
	if (!traces_active)
		return NULL;
	struct traced_proc *tr = bpf_map_lookup_elem(&traced, &tgid);
	if (!tr)
		return NULL;
	return trace_cfg_of(tr);
}

static __always_inline __u32 trace_tag_of(__u32 tgid)
{
	struct trace_cfg *c = trace_of(tgid);
	return c ? c->tag : 0;
}

/*
 * The kernel-side valve for focused-only records (see struct trace_cfg).
 * Racy across CPUs by design: a window may let a few more through.
 */
static __always_inline bool trace_admit(struct trace_cfg *c)
{
	__u32 max = c->rate_max;
	if (!max)
		return true;
	__u64 now = bpf_ktime_get_ns();
	if (now - c->window_ns >= 1000000000ULL) {
		c->window_ns = now;
		c->window_n = 0;
	}
	if (__sync_fetch_and_add(&c->window_n, 1) < max)
		return true;
	__sync_fetch_and_add(&c->dropped, 1);
	return false;
}

/*
 * A new process forked by a traced one is traced by the same trace with one
 * level less to go, unless its parent was the last level. Returns the
 * child's tag, 0 when it is not traced.
 */
static __always_inline __u32 trace_fork(struct task_struct *parent, __u32 child_tgid)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct traced_proc *tr = bpf_map_lookup_elem(&traced, &ptgid);

	if (!tr || !tr->depth || !trace_cfg_of(tr))
		return 0;
	struct traced_proc child = {
		.tag = tr->tag,
		.depth = tr->depth == DEPTH_UNLIMITED ? DEPTH_UNLIMITED : tr->depth - 1,
	};
	if (bpf_map_update_elem(&traced, &child_tgid, &child, BPF_ANY) != 0) {
		count_drop(DROP_TRACE_FULL);
		return 0;
	}
	return child.tag;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	/* New threads share the group; only a new thread group is a process. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;

	__u32 tgid = BPF_CORE_READ(child, tgid);
	/* The lineage is who forked the child (parent, the current task),
	 * even when CLONE_PARENT gives it another real_parent. The traced
	 * map is updated before the ring is tried: a full ring must not lose
	 * the child from its trace. */
	__u32 tag = traces_active ? trace_fork(parent, tgid) : 0;

	struct ev_hdr *h = bpf_ringbuf_reserve(&events, sizeof(*h), 0);
	if (!h) {
		count_drop(DROP_RING_SMALL);
		return 0;
	}
	fill_hdr(h, EV_FORK);
	h->trace = tag;
	h->pid = tgid;
	h->start_ns = BPF_CORE_READ(child, start_boottime);
	/* real_parent, not current: CLONE_PARENT makes them differ. */
	fill_parent(h, child);
	bpf_probe_read_kernel(h->comm, sizeof(h->comm), &child->comm);
	submit(h, sizeof(*h));
	return 0;
}

/*
 * Resolve a path the way d_path does, but to the root of the mount namespace
 * rather than the task's chroot (an analyst wants the real file): walk
 * d_parent up to the mount's root, then jump to the mountpoint in the parent
 * mount. The result is written leaf first, backwards from the end of pbuf,
 * and is s->buf[s->pos..PATH_CAP).
 *
 * The write position lives in the map value, not in a register: a value
 * reloaded from memory is an unknown scalar to the verifier, so it does not
 * carry a precise range from one iteration to the next. Kept in a register,
 * every iteration multiplied the states to explore past the verifier's
 * limit.
 */
static __always_inline bool path_resolve(struct pathbuf *s, const struct path *path)
{
	struct dentry *d = BPF_CORE_READ(path, dentry);
	struct vfsmount *vm = BPF_CORE_READ(path, mnt);
	struct mount *m = (struct mount *)((unsigned long)vm - bpf_core_field_offset(struct mount, mnt));
	struct dentry *root = BPF_CORE_READ(vm, mnt_root);
	bool done = false;

	s->pos = PATH_CAP;
#pragma clang loop unroll(disable)
	for (int i = 0; i < PATH_DEPTH; i++) {
		struct dentry *parent = BPF_CORE_READ(d, d_parent);

		bool last = false;

		if (d == root) {
			struct mount *mp = BPF_CORE_READ(m, mnt_parent);
			if (mp == m) {
				/* The namespace's root mount. */
				done = true;
				break;
			}
			d = BPF_CORE_READ(m, mnt_mountpoint);
			m = mp;
			root = BPF_CORE_READ(m, mnt.mnt_root);
			continue;
		}
		if (d == parent) {
			/* A dentry outside any mounted tree (memfd, a file of a
			 * lazily unmounted fs): like d_path, name it by itself,
			 * so fileless execution shows as /memfd:NAME. */
			last = true;
		}

		__u32 len = BPF_CORE_READ(d, d_name.len);
		const unsigned char *name = BPF_CORE_READ(d, d_name.name);
		__u32 pos = s->pos;
		if (len > 255)
			len = 255;
		/* Keep pos >= 1 so the copied length stays in [1, PATH_CAP). */
		if (len + 1 >= pos)
			break;
		pos -= len;
		bpf_probe_read_kernel(&s->buf[pos & (PATH_CAP - 1)], len & 255, name);
		pos -= 1;
		s->buf[pos & (PATH_CAP - 1)] = '/';
		s->pos = pos;
		if (last) {
			done = true;
			break;
		}
		d = parent;
	}
	if (s->pos >= PATH_CAP) {
		s->pos = PATH_CAP - 1;
		s->buf[PATH_CAP - 1] = '/';
	}
	return !done;
}

/* Copy the resolved path to dst (room for PATH_CAP bytes) and return its
 * length. */
static __always_inline __u32 path_copy(struct pathbuf *s, char *dst)
{
	__u32 pos = s->pos & (PATH_CAP - 1);
	__u32 n = (PATH_CAP - pos) & (PATH_CAP - 1);

	if (bpf_probe_read_kernel(dst, n, &s->buf[pos]) != 0)
		return 0;
	return n;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct scratch *s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!s)
		return 0;
	struct ev_exec *e = &s->ev;

	fill_hdr(&e->h, EV_EXEC);
	fill_proc(&e->h, p);
	fill_parent(&e->h, p);
	bpf_get_current_comm(e->h.comm, sizeof(e->h.comm));
	struct trace_cfg *tc = trace_of(e->h.pid);
	if (tc)
		e->h.trace = tc->tag;

	/* real_cred: the objective credentials, the ones /proc reports. */
	const struct cred *cred = BPF_CORE_READ(p, real_cred);
	e->uid = BPF_CORE_READ(cred, uid.val);
	e->gid = BPF_CORE_READ(cred, gid.val);
	e->euid = BPF_CORE_READ(cred, euid.val);
	e->egid = BPF_CORE_READ(cred, egid.val);
	e->cgroup_id = bpf_get_current_cgroup_id();

	/* The active pid namespace is the one of the task's own pid, which
	 * is what /proc/PID/ns/pid shows (not nsproxy->pid_ns_for_children). */
	struct pid *tp = BPF_CORE_READ(p, thread_pid);
	__u32 level = BPF_CORE_READ(tp, level);
	struct upid up = {};
	bpf_probe_read_kernel(&up, sizeof(up),
			      (void *)((unsigned long)tp + bpf_core_field_offset(struct pid, numbers) +
				       (unsigned long)(level & 31) * sizeof(struct upid)));
	e->pidns = BPF_CORE_READ(up.ns, ns.inum);
	e->netns = BPF_CORE_READ(p, nsproxy, net_ns, ns.inum);
	e->mntns = BPF_CORE_READ(p, nsproxy, mnt_ns, ns.inum);

	__u8 flags = 0;
	__u32 off = 0, n;

	/* bprm->file is what mm->exe_file (and /proc/PID/exe) now points to:
	 * for a script it is the interpreter. */
	struct file *exe = BPF_CORE_READ(bprm, file);
	if (path_resolve(&s->pb, &exe->f_path))
		flags |= EVF_EXE_TRUNC;
	/* Unhashed: unlinked since it was opened, or never linked (memfd);
	 * /proc/PID/exe says "(deleted)" then, and so do we. */
	if (!BPF_CORE_READ(exe, f_path.dentry, d_hash.pprev))
		flags |= EVF_EXE_DELETED;
	/* Which file and which version of it, so that userspace hashes
	 * this one and not a later file at the same path, and can answer
	 * from its cache without opening the file at all. */
	struct inode *ino = BPF_CORE_READ(exe, f_inode);
	e->exe_ino = BPF_CORE_READ(ino, i_ino);
	e->exe_dev = BPF_CORE_READ(ino, i_sb, s_dev);
	e->exe_ctime_ns = inode_ctime_ns(ino);
	e->exe_size = BPF_CORE_READ(ino, i_size);
	n = path_copy(&s->pb, &e->data[off & (DATA_HEAD - 1)]);
	e->exe_len = n;
	off += n;

	if (path_resolve(&s->pb, &p->fs->pwd))
		flags |= EVF_CWD_TRUNC;
	n = path_copy(&s->pb, &e->data[off & (DATA_HEAD - 1)]);
	e->cwd_len = n;
	off += n;

	e->tty_len = 0;
	e->tty_index = 0;
	struct tty_struct *tty = BPF_CORE_READ(p, signal, tty);
	if (tty) {
		struct tty_driver *drv = BPF_CORE_READ(tty, driver);
		int type = BPF_CORE_READ(drv, type);
		int subtype = BPF_CORE_READ(drv, subtype);

		e->tty_index = BPF_CORE_READ(tty, index);
		if (type == bpf_core_enum_value(enum tty_driver_type, TTY_DRIVER_TYPE_PTY) &&
		    subtype == bpf_core_enum_value(enum tty_driver_subtype, PTY_TYPE_SLAVE)) {
			/* tty->name says "pts3"; ps and who say "pts/3". */
			flags |= EVF_TTY_PTS;
		} else {
			off &= DATA_HEAD - 1;
			long r = bpf_probe_read_kernel_str(&e->data[off], TTY_CAP, &tty->name);
			if (r > 1) {
				e->tty_len = (r - 1) & (TTY_CAP - 1);
				off += e->tty_len;
			}
		}
	}

	/* argv as laid out by execve: NUL-terminated strings back to back. */
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	__u64 as = BPF_CORE_READ(mm, arg_start);
	__u64 ae = BPF_CORE_READ(mm, arg_end);
	__u64 alen = ae > as ? ae - as : 0;
	__u32 cap = argv_max;
	if (cap > ARGV_CAP)
		cap = ARGV_CAP;
	if (alen > cap) {
		alen = cap;
		flags |= EVF_ARGV_TRUNC;
	}
	off &= DATA_HEAD - 1;
	if (alen > ARGV_CAP)
		alen = ARGV_CAP;
	if (alen && bpf_probe_read_user(&e->data[off], alen, (void *)as) != 0) {
		alen = 0;
		flags |= EVF_ARGV_FAULT;
	}
	e->argv_len = alen;
	off += alen;

	/* A traced process's environment, as execve laid it out after argv:
	 * the snapshot an analyst needs (LD_PRELOAD, proxies, tokens), so
	 * only traces that collect command lines take it. */
	e->env_len = 0;
	e->_pad = 0;
	if (tc && (tc->flags & TRF_CMDLINES)) {
		__u64 es = BPF_CORE_READ(mm, env_start);
		__u64 ee = BPF_CORE_READ(mm, env_end);
		__u64 elen = ee > es ? ee - es : 0;
		__u32 ecap = tc->env_max;
		if (ecap > ENV_CAP)
			ecap = ENV_CAP;
		if (elen > ecap) {
			elen = ecap;
			flags |= EVF_ENV_TRUNC;
		}
		if (elen > ENV_CAP)
			elen = ENV_CAP;
		if (off > DATA_HEAD + ARGV_CAP)
			off = DATA_HEAD + ARGV_CAP;
		if (elen && bpf_probe_read_user(&e->data[off], elen, (void *)es) != 0) {
			elen = 0;
			flags |= EVF_ENV_FAULT;
		}
		e->env_len = elen;
		off += elen;
	}

	e->h.flags = flags;
	__u64 size = offsetof(struct ev_exec, data) + off;
	if (size > sizeof(*e))
		size = sizeof(*e);
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size;
	if (bpf_ringbuf_output(&events, e, size, wake_flags(pending, size)) != 0)
		count_drop(DROP_RING_EXEC);
	return 0;
}

static __always_inline void emit_exit(struct task_struct *p)
{
	__u32 tag = 0;
	if (traces_active) {
		/* Leave the traced map whether or not the ring has room: the
		 * pid may be reused by an untraced process. */
		__u32 tgid = BPF_CORE_READ(p, tgid);
		struct traced_proc *tr = bpf_map_lookup_elem(&traced, &tgid);
		if (tr) {
			if (trace_cfg_of(tr))
				tag = tr->tag;
			bpf_map_delete_elem(&traced, &tgid);
		}
	}

	struct ev_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);
	if (!x) {
		count_drop(DROP_RING_SMALL);
		return;
	}
	fill_hdr(&x->h, EV_EXIT);
	x->h.trace = tag;
	fill_proc(&x->h, p);
	/* The parent at exit: the one that will reap it, which is a subreaper
	 * or init if the original parent died first. The /proc source reports
	 * the same. */
	fill_parent(&x->h, p);
	bpf_probe_read_kernel(x->h.comm, sizeof(x->h.comm), &p->comm);

	/* What wait() reports for the group: the group exit code once the
	 * group exit started (exit_group, fatal signal, or the last thread's
	 * exit via synchronize_group_exit), else this task's code. */
	struct signal_struct *sig = BPF_CORE_READ(p, signal);
	__u32 code;
	if (BPF_CORE_READ(sig, flags) & SIGNAL_GROUP_EXIT)
		code = BPF_CORE_READ(sig, group_exit_code);
	else
		code = BPF_CORE_READ(p, exit_code);
	x->code = code;
	x->_pad = 0;
	submit(x, sizeof(*x));
}

/*
 * Recent kernels (this one: see btf_trace_sched_process_exit) pass
 * group_dead, computed in do_exit by atomic_dec_and_test(&signal->live)
 * before the tracepoint: exactly one exiting thread sees it true, even when
 * threads exit concurrently. The loader picks this program when the
 * argument exists.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p, bool group_dead)
{
	if (!group_dead)
		return 0;
	emit_exit(p);
	return 0;
}

/*
 * Older kernels: do_exit decrements signal->live before the tracepoint, so
 * the last thread sees 0. Two threads that pass the decrement before either
 * reaches the tracepoint both see 0; the decoder tolerates the duplicate.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit_legacy, struct task_struct *p)
{
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	emit_exit(p);
	return 0;
}

/* Read the 4-tuple of sk into o. */
static __always_inline void owner_tuple(struct sock_owner *o, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	o->family = family;
	o->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	o->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	o->_pad = 0;
	__builtin_memset(o->saddr, 0, sizeof(o->saddr));
	__builtin_memset(o->daddr, 0, sizeof(o->daddr));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)o->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)o->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)o->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)o->daddr, sk, __sk_common.skc_v6_daddr);
	}
}

static __always_inline void emit_conn(__u8 kind, const struct sock_owner *o)
{
	struct ev_conn *c = bpf_ringbuf_reserve(&events, sizeof(*c), 0);
	if (!c) {
		count_drop(DROP_RING_SMALL);
		return;
	}
	fill_hdr(&c->h, kind);
	c->h.trace = o->trace;
	c->h.pid = o->pid;
	c->h.start_ns = o->start_ns;
	__builtin_memcpy(c->h.comm, o->comm, sizeof(c->h.comm));
	c->family = o->family;
	c->sport = o->sport;
	c->dport = o->dport;
	c->_pad = 0;
	__builtin_memcpy(c->saddr, o->saddr, sizeof(c->saddr));
	__builtin_memcpy(c->daddr, o->daddr, sizeof(c->daddr));
	submit(c, sizeof(*c));
}

static __always_inline bool is_inet_tcp(const struct sock *sk)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return false;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	return family == AF_INET || family == AF_INET6;
}

static __always_inline void owner_current(struct sock_owner *o, __u32 state, __u32 tag)
{
	struct task_struct *t = bpf_get_current_task_btf();

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->state = state;
	o->trace = tag;
	o->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/* The live trace with this tag, or NULL. */
static __always_inline struct trace_cfg *trace_live(__u32 tag)
{
	__u32 slot = tag & (MAX_TRACES - 1);
	struct trace_cfg *c = bpf_map_lookup_elem(&trace_cfgs, &slot);

	if (!c || !tag || c->tag != tag)
		return NULL;
	return c;
}

/* Fill the header of a focused record for the current process. */
static __always_inline void fill_current(struct ev_hdr *h, __u8 kind, __u32 tag)
{
	struct task_struct *t = bpf_get_current_task_btf();

	fill_hdr(h, kind);
	h->trace = tag;
	fill_proc(h, t);
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* Copy a sock_owner's tuple into a socket record. */
static __always_inline void sock_tuple(struct ev_sock *e, const struct sock_owner *o)
{
	e->family = o->family;
	e->sport = o->sport;
	e->dport = o->dport;
	__builtin_memcpy(e->saddr, o->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, o->daddr, sizeof(e->daddr));
}

static __always_inline struct ev_sock *sock_reserve(__u8 kind)
{
	struct ev_sock *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(DROP_RING_TRACE);
		return NULL;
	}
	__builtin_memset((char *)e + sizeof(e->h), 0, sizeof(*e) - sizeof(e->h));
	fill_hdr(&e->h, kind);
	return e;
}

/*
 * A traced TCP connect that failed after its SYN was sent (refused, timed
 * out), seen in softirq: the owner is the one remembered at SYN_SENT, the
 * error is the one the kernel set before closing.
 */
static __always_inline bool emit_connect_failed(struct sock_owner *o, const struct sock *sk)
{
	struct trace_cfg *c = trace_live(o->trace);
	if (!c || !(c->flags & TRF_NET) || !trace_admit(c))
		return false;
	owner_tuple(o, sk);
	struct ev_sock *e = sock_reserve(EV_CONNECT_RESULT);
	if (!e)
		return false;
	e->h.trace = o->trace;
	e->h.pid = o->pid;
	e->h.start_ns = o->start_ns;
	__builtin_memcpy(e->h.comm, o->comm, sizeof(e->h.comm));
	int err = BPF_CORE_READ(sk, sk_err);
	e->result = err > 0 ? -err : -ECONNABORTED;
	e->domain = o->family;
	e->type = SOCK_STREAM;
	e->proto = IPPROTO_TCP;
	sock_tuple(e, o);
	submit(e, sizeof(*e));
	return true;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(handle_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (!is_inet_tcp(sk))
		return 0;
	__u64 key = (__u64)sk;

	switch (newstate) {
	case TCP_SYN_SENT: {
		/* tcp_v{4,6}_connect, in the connecting task. The local port is
		 * not chosen yet, so the connect is reported at ESTABLISHED. */
		struct sock_owner o = {};
		owner_current(&o, OWN_CONNECTING, trace_tag_of(bpf_get_current_pid_tgid() >> 32));
		bpf_map_update_elem(&socks, &key, &o, BPF_ANY);
		return 0;
	}
	case TCP_ESTABLISHED: {
		struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);
		if (!o || o->state != OWN_CONNECTING)
			return 0; /* passive side: reported by the accept hook */
		o->state = OWN_CONNECTED;
		owner_tuple(o, sk);
		emit_conn(EV_CONNECT, o);
		return 0;
	}
	case TCP_CLOSE: {
		struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);
		if (!o)
			return 0;
		if (o->state == OWN_CONNECTING) {
			/* A connect that never got established was never
			 * reported; a traced one is, as a failure. The entry
			 * stays, marked, so that the connect syscall that
			 * returns this failure does not report it again. */
			if (o->trace && emit_connect_failed(o, sk)) {
				o->state = OWN_FAILED;
				return 0;
			}
		} else if (o->state != OWN_FAILED) {
			emit_conn(EV_CLOSE, o);
		}
		bpf_map_delete_elem(&socks, &key);
		return 0;
	}
	}
	return 0;
}

#if defined(__TARGET_ARCH_x86)
#define NR_open 2
#define NR_socket 41
#define NR_connect 42
#define NR_accept 43
#define NR_rename 82
#define NR_creat 85
#define NR_unlink 87
#define NR_openat 257
#define NR_unlinkat 263
#define NR_renameat 264
#define NR_accept4 288
#define NR_renameat2 316
#define NR_openat2 437
/* At sys_exit the registers still hold the arguments: the x86-64 syscall
 * ABI preserves them, and only the return value goes to ax. */
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG0(regs) BPF_CORE_READ(regs, di)
#define SYSCALL_ARG1(regs) BPF_CORE_READ(regs, si)
#define SYSCALL_ARG2(regs) BPF_CORE_READ(regs, dx)
#define SYSCALL_ARG3(regs) BPF_CORE_READ(regs, r10)
#define SYSCALL_ARG4(regs) BPF_CORE_READ(regs, r8)
#define SYSCALL_COMPAT(t) (BPF_CORE_READ(t, thread_info.status) & TS_COMPAT)
#elif defined(__TARGET_ARCH_arm64)
#define NR_open -1 /* arm64 has only the *at forms */
#define NR_socket 198
#define NR_connect 203
#define NR_accept 202
#define NR_rename -1
#define NR_creat -1
#define NR_unlink -1
#define NR_openat 56
#define NR_unlinkat 35
#define NR_renameat 38
#define NR_accept4 242
#define NR_renameat2 276
#define NR_openat2 437
#define SYSCALL_NR(regs) ((regs)->syscallno)
/* x0 holds the return value at exit; orig_x0 keeps the first argument. */
#define SYSCALL_ARG0(regs) BPF_CORE_READ(regs, orig_x0)
#define SYSCALL_ARG1(regs) BPF_CORE_READ(regs, regs[1])
#define SYSCALL_ARG2(regs) BPF_CORE_READ(regs, regs[2])
#define SYSCALL_ARG3(regs) BPF_CORE_READ(regs, regs[3])
#define SYSCALL_ARG4(regs) BPF_CORE_READ(regs, regs[4])
#define SYSCALL_COMPAT(t) 0 /* compat tasks are refused by the number check below */
#endif

/* The file of fd in task t, or NULL. */
static __always_inline struct file *fd_file(struct task_struct *t, long fd)
{
	if (fd < 0)
		return NULL;
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if ((__u64)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* The socket behind a file, or NULL: a socket file's private_data is its
 * struct socket, whose ->file points back, which identifies a socket
 * without a ksym lookup. */
static __always_inline struct sock *file_sock(struct file *f)
{
	if (!f)
		return NULL;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != f)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* The syscalls a trace records; everything else leaves sys_exit after this
 * test, traced or not. */
static __always_inline bool focused_nr(long nr)
{
	switch (nr) {
	case NR_open:
	case NR_creat:
	case NR_openat:
	case NR_openat2:
	case NR_rename:
	case NR_renameat:
	case NR_renameat2:
	case NR_unlink:
	case NR_unlinkat:
	case NR_socket:
	case NR_connect:
	case NR_accept:
	case NR_accept4:
		return true;
	}
	return false;
}

/*
 * The directory a relative path of the current task starts from (its cwd
 * for AT_FDCWD, else the dirfd's path), copied to dst. Returns its length,
 * with BASE_TRUNC or BASE_FAULT or'ed in above the low 16 bits.
 */
#define BASE_TRUNC (1u << 16)
#define BASE_FAULT (1u << 17)
static __noinline __u32 base_copy(struct pathbuf *pb, char *dst, long dfd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	bool trunc;

	if (!pb || !dst)
		return BASE_FAULT;
	if (dfd == AT_FDCWD) {
		trunc = path_resolve(pb, &t->fs->pwd);
	} else {
		struct file *f = fd_file(t, dfd);
		if (!f)
			return BASE_FAULT;
		trunc = path_resolve(pb, &f->f_path);
	}
	return path_copy(pb, dst) | (trunc ? BASE_TRUNC : 0);
}

/* Read a NUL-terminated path from user memory into dst; returns its length
 * without the NUL, or -1 when it could not be read. */
static __always_inline long user_path(char *dst, const char *src)
{
	long n = bpf_probe_read_user_str(dst, PATH_CAP, src);
	if (n <= 0)
		return -1;
	return (n - 1) & (PATH_CAP - 1);
}

/*
 * A traced process's file syscall returned. Paths are read here, not at
 * sys_enter: the kernel has just copied them, so their pages are present,
 * where at sys_enter a string the process never touched (a literal in a
 * page not yet faulted in) cannot be read by a program that may not sleep.
 * The arguments are still in the registers (see SYSCALL_ARG0), so no
 * enter->exit pairing state is needed at all.
 */
static __noinline void trace_file(struct pt_regs *regs, long nr, long ret, __u32 tag)
{
	__u32 zero = 0;
	struct fscratch *s = bpf_map_lookup_elem(&fscratch, &zero);
	if (!s)
		return;
	struct ev_file *e = &s->ev;
	__u64 a0 = SYSCALL_ARG0(regs), a1 = SYSCALL_ARG1(regs), a2 = SYSCALL_ARG2(regs);
	__u64 a3 = SYSCALL_ARG3(regs);
	long dfd = AT_FDCWD, dfd2 = AT_FDCWD;
	const char *p1 = NULL, *p2 = NULL;
	__u64 flags = 0;
	__u32 mode = 0;
	__u8 kind;

	switch (nr) {
	case NR_open:
		kind = EV_FILE_OPEN;
		p1 = (const char *)a0;
		flags = a1;
		mode = a2;
		break;
	case NR_creat:
		kind = EV_FILE_OPEN;
		p1 = (const char *)a0;
		flags = O_CREAT | O_WRONLY | O_TRUNC;
		mode = a1;
		break;
	case NR_openat:
		kind = EV_FILE_OPEN;
		dfd = (int)a0;
		p1 = (const char *)a1;
		flags = a2;
		mode = a3;
		break;
	case NR_openat2: {
		struct open_how how = {};
		kind = EV_FILE_OPEN;
		dfd = (int)a0;
		p1 = (const char *)a1;
		bpf_probe_read_user(&how, sizeof(how), (void *)a2);
		flags = how.flags;
		mode = how.mode;
		break;
	}
	case NR_rename:
		kind = EV_FILE_RENAME;
		p1 = (const char *)a0;
		p2 = (const char *)a1;
		break;
	case NR_renameat:
	case NR_renameat2:
		kind = EV_FILE_RENAME;
		dfd = (int)a0;
		p1 = (const char *)a1;
		dfd2 = (int)a2;
		p2 = (const char *)a3;
		if (nr == NR_renameat2)
			flags = (__u32)SYSCALL_ARG4(regs);
		break;
	case NR_unlink:
		kind = EV_FILE_UNLINK;
		p1 = (const char *)a0;
		break;
	case NR_unlinkat:
		kind = EV_FILE_UNLINK;
		dfd = (int)a0;
		p1 = (const char *)a1;
		flags = (__u32)a2;
		break;
	default:
		return;
	}

	fill_current(&e->h, kind, tag);
	e->result = ret;
	e->flags = flags;
	e->mode = mode;
	e->ino = 0;
	e->dev = 0;
	if (kind == EV_FILE_OPEN && ret >= 0) {
		struct file *f = fd_file(bpf_get_current_task_btf(), ret);
		if (f) {
			struct inode *ino = BPF_CORE_READ(f, f_inode);
			e->ino = BPF_CORE_READ(ino, i_ino);
			e->dev = BPF_CORE_READ(ino, i_sb, s_dev);
		}
	}

	__u8 fl = 0;
	__u32 off = 0;
	long n = user_path(e->data, p1);
	bool rel1 = false, rel2 = false;
	if (n < 0) {
		fl |= EVF_PATH_FAULT;
		n = 0;
	} else if (n > 0 && e->data[0] != '/') {
		rel1 = true;
	}
	e->path_len = n;
	off = n;

	e->path2_len = 0;
	if (p2) {
		off &= PATH_CAP - 1;
		n = user_path(&e->data[off], p2);
		if (n < 0) {
			fl |= EVF_PATH2_FAULT;
			n = 0;
		} else if (n > 0 && e->data[off] != '/') {
			rel2 = true;
		}
		e->path2_len = n;
		off += n;
	}

	__u32 b;
	e->base_len = 0;
	if (rel1) {
		off &= FILE_HEAD - 1;
		b = base_copy(&s->pb, &e->data[off], dfd);
		if (b & BASE_TRUNC)
			fl |= EVF_BASE_TRUNC;
		if (b & BASE_FAULT)
			fl |= EVF_BASE_FAULT;
		b &= PATH_CAP - 1;
		e->base_len = b;
		off += b;
	}
	e->base2_len = 0;
	if (rel2) {
		off &= FILE_HEAD - 1;
		b = base_copy(&s->pb, &e->data[off], dfd2);
		if (b & BASE_TRUNC)
			fl |= EVF_BASE2_TRUNC;
		if (b & BASE_FAULT)
			fl |= EVF_BASE2_FAULT;
		b &= PATH_CAP - 1;
		e->base2_len = b;
		off += b;
	}
	e->h.flags = fl;

	__u64 size = offsetof(struct ev_file, data) + (off & (FILE_HEAD - 1));
	if (size > sizeof(*e))
		size = sizeof(*e);
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size;
	if (bpf_ringbuf_output(&events, e, size, wake_flags(pending, size)) != 0)
		count_drop(DROP_RING_TRACE);
}

/* Read an AF_INET or AF_INET6 destination from a user sockaddr. */
static __always_inline void user_sockaddr(struct ev_sock *e, const void *uaddr)
{
	struct sockaddr_in6 sa = {};

	if (bpf_probe_read_user(&sa, sizeof(struct sockaddr_in), uaddr) != 0)
		return;
	if (sa.sin6_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&sa;
		e->dport = bpf_ntohs(in->sin_port);
		__builtin_memcpy(e->daddr, &in->sin_addr, 4);
	} else if (sa.sin6_family == AF_INET6) {
		if (bpf_probe_read_user(&sa, sizeof(sa), uaddr) != 0)
			return;
		e->dport = bpf_ntohs(sa.sin6_port);
		__builtin_memcpy(e->daddr, &sa.sin6_addr, 16);
	}
}

/* A traced process's socket(2) or connect(2) returned. */
static __noinline void trace_net(struct pt_regs *regs, long nr, long ret, __u32 tag)
{
	__u64 a0 = SYSCALL_ARG0(regs), a1 = SYSCALL_ARG1(regs), a2 = SYSCALL_ARG2(regs);

	if (nr == NR_socket) {
		struct ev_sock *e = sock_reserve(EV_SOCKET);
		if (!e)
			return;
		fill_current(&e->h, EV_SOCKET, tag);
		e->result = ret;
		e->domain = (int)a0;
		e->type = (int)a1;
		e->proto = (int)a2;
		submit(e, sizeof(*e));
		return;
	}

	/* connect */
	struct sock *sk = file_sock(fd_file(bpf_get_current_task_btf(), (int)a0));
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	__u64 key = (__u64)sk;
	if (proto == IPPROTO_TCP) {
		/* Established, or still in progress (non-blocking, or a
		 * signal interrupted the wait): the state machine reports the
		 * outcome, success or failure, with the trace's tag. */
		if (ret == 0 || BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_CLOSE)
			return;
		/* Failed after the SYN: reported at TCP_CLOSE already. */
		struct sock_owner *o = bpf_map_lookup_elem(&socks, &key);
		if (o && o->state == OWN_FAILED) {
			bpf_map_delete_elem(&socks, &key);
			return;
		}
	}

	struct sock_owner t = {};
	owner_tuple(&t, sk);
	struct ev_sock *e = sock_reserve(EV_CONNECT_RESULT);
	if (!e)
		return;
	fill_current(&e->h, EV_CONNECT_RESULT, tag);
	e->result = ret;
	e->domain = family;
	e->type = BPF_CORE_READ(sk, sk_type);
	e->proto = proto;
	sock_tuple(e, &t);
	if (ret != 0) {
		/* No peer in the socket: the one the process asked for. */
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		e->dport = 0;
		user_sockaddr(e, (const void *)a1);
	}
	submit(e, sizeof(*e));
}

/*
 * Every syscall exit on the host runs this: the untraced path must reject
 * everything else in a few instructions. accept(2) and accept4(2) returning
 * a TCP socket are the baseline's: the passive handshake completes in
 * softirq where no owner is known, so this is where the accepting process is
 * visible. The focused syscalls of traced processes go to trace_file and
 * trace_net.
 */
SEC("tp_btf/sys_exit")
int BPF_PROG(handle_sys_exit, struct pt_regs *regs, long ret)
{
	long nr = SYSCALL_NR(regs);
	bool accept = nr == NR_accept || nr == NR_accept4;
	__u32 tag = 0;

	if (traces_active && focused_nr(nr)) {
		struct trace_cfg *c = trace_of(bpf_get_current_pid_tgid() >> 32);
		if (c && !SYSCALL_COMPAT(bpf_get_current_task_btf())) {
			tag = c->tag;
			if (!accept) {
				__u32 flags = c->flags;
				bool file = nr != NR_socket && nr != NR_connect;
				if (!(flags & (file ? TRF_FILES : TRF_NET)) || !trace_admit(c))
					return 0;
				if (file)
					trace_file(regs, nr, ret, tag);
				else
					trace_net(regs, nr, ret, tag);
				return 0;
			}
		}
	}
	if (!accept || ret < 0)
		return 0;

	struct sock *sk = file_sock(fd_file(bpf_get_current_task_btf(), ret));
	if (!sk || !is_inet_tcp(sk))
		return 0;

	struct sock_owner o = {};
	owner_current(&o, OWN_ACCEPTED, tag);
	owner_tuple(&o, sk);
	emit_conn(EV_ACCEPT, &o);

	__u64 key = (__u64)sk;
	if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_CLOSE) {
		/* Reset before accept returned: no close transition will come. */
		emit_conn(EV_CLOSE, &o);
		return 0;
	}
	bpf_map_update_elem(&socks, &key, &o, BPF_ANY);
	return 0;
}
