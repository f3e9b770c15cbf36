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
 * An exec record is built here and then copied to the ring with its real
 * length, so the ring holds compact records while the program has room for
 * the largest argv. pbuf is where paths are assembled leaf first; the extra
 * 256 bytes let a masked offset plus a NAME_MAX component stay in bounds.
 */
struct scratch {
	struct ev_exec ev;
	char pbuf[PATH_CAP + 256];
	__u32 pos; /* start of the path in pbuf, see path_resolve */
	/* Unused: names the fixed-size record types in the object's BTF (BTF
	 * keeps only types reachable from maps and program signatures), so
	 * bpf2go can mirror them in Go for the decoder's layout test. */
	struct ev_exit btf_exit;
	struct ev_conn btf_conn;
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
	h->_pad1 = 0;
	h->ppid = 0;
	h->pstart_ns = 0;
	h->time_ns = bpf_ktime_get_boot_ns();
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	/* New threads share the group; only a new thread group is a process. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;

	struct ev_hdr *h = bpf_ringbuf_reserve(&events, sizeof(*h), 0);
	if (!h) {
		count_drop(DROP_RING_SMALL);
		return 0;
	}
	fill_hdr(h, EV_FORK);
	h->pid = BPF_CORE_READ(child, tgid);
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
 * and is s->pbuf[s->pos..PATH_CAP).
 *
 * The write position lives in the map value, not in a register: a value
 * reloaded from memory is an unknown scalar to the verifier, so it does not
 * carry a precise range from one iteration to the next. Kept in a register,
 * every iteration multiplied the states to explore past the verifier's
 * limit.
 */
static __always_inline bool path_resolve(struct scratch *s, const struct path *path)
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
		bpf_probe_read_kernel(&s->pbuf[pos & (PATH_CAP - 1)], len & 255, name);
		pos -= 1;
		s->pbuf[pos & (PATH_CAP - 1)] = '/';
		s->pos = pos;
		if (last) {
			done = true;
			break;
		}
		d = parent;
	}
	if (s->pos >= PATH_CAP) {
		s->pos = PATH_CAP - 1;
		s->pbuf[PATH_CAP - 1] = '/';
	}
	return !done;
}

/* Append the resolved path to data[off..] and return its length. */
static __always_inline __u32 path_copy(struct scratch *s, __u32 off)
{
	__u32 pos = s->pos & (PATH_CAP - 1);
	__u32 n = (PATH_CAP - pos) & (PATH_CAP - 1);

	off &= DATA_HEAD - 1;
	if (bpf_probe_read_kernel(&s->ev.data[off], n, &s->pbuf[pos]) != 0)
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
	if (path_resolve(s, &exe->f_path))
		flags |= EVF_EXE_TRUNC;
	/* Unhashed: unlinked since it was opened, or never linked (memfd);
	 * /proc/PID/exe says "(deleted)" then, and so do we. */
	if (!BPF_CORE_READ(exe, f_path.dentry, d_hash.pprev))
		flags |= EVF_EXE_DELETED;
	n = path_copy(s, off);
	e->exe_len = n;
	off += n;

	if (path_resolve(s, &p->fs->pwd))
		flags |= EVF_CWD_TRUNC;
	n = path_copy(s, off);
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
	struct ev_exit *x = bpf_ringbuf_reserve(&events, sizeof(*x), 0);
	if (!x) {
		count_drop(DROP_RING_SMALL);
		return;
	}
	fill_hdr(&x->h, EV_EXIT);
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

static __always_inline void owner_current(struct sock_owner *o, __u32 state)
{
	struct task_struct *t = bpf_get_current_task_btf();

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->state = state;
	o->start_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
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
		owner_current(&o, OWN_CONNECTING);
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
		/* A connect that never got established was never reported. */
		if (o->state != OWN_CONNECTING)
			emit_conn(EV_CLOSE, o);
		bpf_map_delete_elem(&socks, &key);
		return 0;
	}
	}
	return 0;
}

#if defined(__TARGET_ARCH_x86)
#define NR_accept 43
#define NR_accept4 288
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, orig_ax)
#elif defined(__TARGET_ARCH_arm64)
#define NR_accept 202
#define NR_accept4 242
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, syscallno)
#endif

/*
 * accept(2) and accept4(2) returning a TCP socket, in the accepting task.
 * The passive handshake completes in softirq where no owner is known, so
 * this is where the accepting process is visible. This program runs on every
 * syscall exit on the host: it must reject everything else in a few
 * instructions, before any helper call.
 */
SEC("tp_btf/sys_exit")
int BPF_PROG(handle_sys_exit, struct pt_regs *regs, long ret)
{
	if (ret < 0)
		return 0;
	long nr = SYSCALL_NR(regs);
	if (nr != NR_accept && nr != NR_accept4)
		return 0;

	struct task_struct *t = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if ((__u64)ret >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[ret]);
	if (!f)
		return 0;
	/* A socket file's private_data is its struct socket, whose ->file
	 * points back: that pair identifies a socket without a ksym lookup. */
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock || BPF_CORE_READ(sock, file) != f)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || !is_inet_tcp(sk))
		return 0;

	struct sock_owner o = {};
	owner_current(&o, OWN_ACCEPTED);
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
