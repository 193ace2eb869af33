/**
 * The Host seam: every touch of a machine (sysfs, files, processes) goes through this interface, so the same
 * provider code runs against the local machine, a machine over SSH, or the in-memory fake kernel of the tests.
 *
 * Work is expressed as a batch of operations that a host executes in one round trip (one message to a long-lived
 * interpreter process, locally or over one SSH channel). A batch runs its operations in order; with `stopOnError` it stops at the first failed
 * write, put or exec, so a kernel sequence (unbind, override, probe) never continues past a refusal.
 */

/** One operation of a batch. Paths are absolute and are checked by {@link assertSafePath} before they leave us. */
export type Op =
    /** Read a file's whole text. Fails with ENOENT when absent. With `expect`, a guard: see {@link Expect}. */
    | ({ op: "read"; path: string; timeoutMs?: number } & Expect)
    /** Where a symbolic link leads, as a canonical absolute path (`readlink -m`; for a link to a directory, the
     *  directory's physical path, which costs no process). Callers use its last components (`.../drivers/vfio-pci`,
     *  `.../iommu_groups/8`). Fails with EINVAL when the path is not a link. With `expect`, a guard. */
    | ({ op: "readlink"; path: string; timeoutMs?: number } & Expect)
    /** Names in a directory (following links), one per line, sorted. Fails with ENOENT when absent. With `expect`, a guard. */
    | ({ op: "list"; path: string; timeoutMs?: number } & Expect)
    /** `type mode uid gid size major:minor` of a path (following links); type is one of
     *  `file`, `dir`, `char`, `block`, `link`, `fifo`, `socket`. Fails with ENOENT when absent. */
    | { op: "stat"; path: string; timeoutMs?: number }
    /** Write `data` to an existing file in one write(2), as `echo > /sys/...` does. Sysfs attributes only. */
    | { op: "write"; path: string; data: string; timeoutMs?: number; optional?: boolean }
    /**
     * Create or replace a regular file atomically (temp file + rename) with the given octal mode. With `inPlace`, a
     * file that is absent is instead created with one write(2) where it belongs (no temp file, no rename, so no
     * process): only for a file whose readers take an empty one as absent (the binding journal), since a write cut
     * short there leaves it empty. A file that exists is still replaced by rename. Not with `optional`.
     */
    | { op: "put"; path: string; data: string; mode: number; timeoutMs?: number; optional?: boolean; inPlace?: boolean }
    /** mkdir -p: the directory gets the given mode when created; missing parents get 0700. */
    | { op: "mkdir"; path: string; mode: number; timeoutMs?: number; optional?: boolean }
    /** Remove a regular file; succeeds when already absent. */
    | { op: "remove"; path: string; timeoutMs?: number; optional?: boolean }
    /** PIDs of the processes that hold `path` open (from /proc/PID/fd links), one per line. */
    | { op: "openers"; path: string; timeoutMs?: number }
    /**
     * PIDs of the processes that hold the VFIO group of the device at `path` (a sysfs device directory) open: the
     * group is the device's `iommu_group` link, its node `/dev/vfio/<N>`. Empty when the device or node is absent or
     * nobody holds it. With `guard`, a held group fails the op (EBUSY, message `/dev/vfio/<N>: ...`, the PIDs
     * still in `data`), which stops a `stopOnError` batch before a write that would block while a VM holds it.
     */
    | { op: "groupHolders"; path: string; guard?: boolean; timeoutMs?: number }
    /** Run a program with an argument vector (never a shell string); stdout is the result's data. */
    | { op: "exec"; argv: string[]; timeoutMs?: number; optional?: boolean };

/**
 * A read that guards what follows it: the answer, trailing newlines removed (an absent path answers ""), must equal
 * `expect`, else the op fails with errno `ESTALE` (message `found <answer>`) and a `stopOnError` batch stops there.
 * A batch planned from an earlier read thereby checks, in the same round trip and before its first write, that the
 * host is still as it was read (compare-and-swap for sysfs state).
 */
export interface Expect {
    expect?: string;
}

/** Whether an op is a read with an expectation (see {@link Expect}). */
export function isGuardRead(op: Op): op is Extract<Op, { op: "read" | "readlink" | "list" }> & { expect: string } {
    return (op.op === "read" || op.op === "readlink" || op.op === "list") && op.expect !== undefined;
}

export interface OpResult {
    /** True when the operation succeeded (for exec: exit status 0). */
    ok: boolean;
    /** File text, link target, list, stat line, or exec stdout. Empty on failure. */
    data: string;
    /** The errno name (`ENODEV`, `EBUSY`, `ETIMEDOUT`, ...) when the failure maps to one. */
    errno?: string;
    /** The raw error text (stderr), single line. */
    message?: string;
    /** Exit status of an exec. */
    code?: number;
    /** True when the operation did not run because an earlier one failed or timed out. */
    skipped?: boolean;
}

export interface RunOptions {
    /** Stop at the first failed write/put/mkdir/remove/exec that is not `optional`, or failed guard. Default false. */
    stopOnError?: boolean;
}

export interface Host {
    /** A label for messages: `local`, `root@10.0.0.5:22`, `fake`. Never contains secrets. */
    readonly name: string;
    /** Execute a batch in one round trip. Resolves with one result per op (skipped ones marked). */
    run(ops: Op[], opts?: RunOptions): Promise<OpResult[]>;
    /**
     * Run `fn` while holding the host-wide pulumi-vfio lock (flock on /run/lock/pulumi-vfio.lock, mode 0600), so
     * two resources (or two `pulumi up`s) never interleave their sysfs sequences on one host. `fn` receives the host
     * to use inside: only its batches take the lock, in the round trip of the first one, before any of its
     * operations; when the lock cannot be taken within `timeoutMs` (default 120 000 ms), that batch throws and none
     * of it ran. A section that runs no batch takes no lock. Name the parameter `host` to shadow the unlocked one:
     * `host.withLock(async (host) => …)`. The locked host throws when used after `fn` ended.
     */
    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs?: number): Promise<T>;
    /** Round trips made so far: each `run` is one, the lock taken with it included; dropping the lock is a message
     *  without an answer. */
    readonly roundTrips: number;
    /**
     * A stream connected to a UNIX socket on the host (QEMU's QMP socket). Locally a `net` connection, over SSH an
     * OpenSSH `direct-streamlocal` channel on the same connection, on the fake kernel an in-memory endpoint. The
     * socket is opened as the user we log in as (not through sudo): QMP sockets are root-owned 0600, so run as root.
     */
    openUnixSocket(path: string): Promise<import("stream").Duplex>;
    close(): Promise<void>;
}

/** Default time limits in milliseconds. Sysfs writes can block forever (unbind while a VM holds the device). */
export const DEFAULT_TIMEOUT_MS = {
    read: 10_000,
    write: 15_000,
    exec: 120_000,
};

const SAFE_PATH = /^\/(?:[A-Za-z0-9_@+,:=.-]+\/?)*$/;

/**
 * Throws unless `path` is absolute, made of plain path characters and free of `.`/`..` components. Every path
 * that reaches a host passes here, so a value from user input can never walk out of the directory it names.
 */
export function assertSafePath(path: string): void {
    if (!SAFE_PATH.test(path) || path.split("/").some((c) => c === "." || c === "..")) {
        throw new Error(`refusing unsafe path ${JSON.stringify(path)}: only absolute paths of [A-Za-z0-9_@+,:=.-] without '.' or '..' components are used`);
    }
}

/** Linux strerror(3) texts → errno names, for errors a shell reports as text. */
const STRERROR: Record<string, string> = {
    "Operation not permitted": "EPERM",
    "No such file or directory": "ENOENT",
    "No such process": "ESRCH",
    "Input/output error": "EIO",
    "No such device or address": "ENXIO",
    "Argument list too long": "E2BIG",
    "Bad file descriptor": "EBADF",
    "Resource temporarily unavailable": "EAGAIN",
    "Cannot allocate memory": "ENOMEM",
    "Permission denied": "EACCES",
    "Device or resource busy": "EBUSY",
    "File exists": "EEXIST",
    "No such device": "ENODEV",
    "Not a directory": "ENOTDIR",
    "Is a directory": "EISDIR",
    "Invalid argument": "EINVAL",
    "No space left on device": "ENOSPC",
    "Read-only file system": "EROFS",
    "Numerical result out of range": "ERANGE",
    "Too many users": "EUSERS",
    "Operation not supported": "EOPNOTSUPP",
    "Function not implemented": "ENOSYS",
    "Inappropriate ioctl for device": "ENOTTY",
    "Connection timed out": "ETIMEDOUT",
};

/** The errno name in an error text such as `bash: line 3: printf: write error: No such device`. */
export function errnoFromMessage(message: string): string | undefined {
    for (const [text, name] of Object.entries(STRERROR)) {
        if (message.includes(text)) return name;
    }
    return undefined;
}

/** strerror text for an errno name (the inverse of the table above), for the fake kernel's messages. */
export function strerror(errno: string): string {
    for (const [text, name] of Object.entries(STRERROR)) {
        if (name === errno) return text;
    }
    return errno;
}

export function defaultTimeout(op: Op): number {
    if (op.timeoutMs !== undefined) return op.timeoutMs;
    switch (op.op) {
        case "exec":
            return DEFAULT_TIMEOUT_MS.exec;
        case "write":
        case "put":
        case "mkdir":
        case "remove":
            return DEFAULT_TIMEOUT_MS.write;
        default:
            return DEFAULT_TIMEOUT_MS.read;
    }
}

/** True for operations whose failure stops a `stopOnError` batch: those that change the host, and guards. */
export function isMutation(op: Op): boolean {
    return op.op === "write" || op.op === "put" || op.op === "mkdir" || op.op === "remove" || op.op === "exec" || (op.op === "groupHolders" && !!op.guard) || isGuardRead(op);
}
