/**
 * An in-memory kernel for unit tests: a sysfs/devfs/filesystem view whose writes follow the kernel semantics
 * recorded in DOMAIN.md and LAB.md (errno values, driver_override, bind/unbind/drivers_probe, IOMMU groups,
 * /dev/vfio/N). The contract suite runs the same tests against this and against the lab's real kernel, which is
 * what keeps it honest.
 *
 * The kernel is plain JSON state plus subsystems that resolve paths into nodes; a subsystem (PCI, mdev, kvmfr,
 * QEMU) owns its part of the tree. State can be saved to a file so a provider running in another process (the
 * dynamic-provider plugin driven by the engine-boundary tests) sees and changes the same fake machine.
 */
import { Duplex } from "stream";
import { strerror } from "../../provider/host/types";

/** A kernel refusal: the errno a write(2) or open(2) would return. */
export class FakeErrno extends Error {
    constructor(public readonly errno: string, detail?: string) {
        super(detail ?? strerror(errno));
    }
}

/** The write never returns (unbind of a device a VM holds): the host reports a timeout and abandons it. */
export class FakeHang extends Error {
    constructor(what: string) {
        super(`${what} blocks in the kernel`);
    }
}

export type FakeNode =
    | { kind: "file"; read?: () => string; write?: (data: string) => void; mode?: number; uid?: number; gid?: number; size?: number }
    | { kind: "dir"; list: () => string[] }
    | { kind: "link"; target: string }
    | { kind: "char"; major: number; minor: number; mode: number; uid?: number; gid?: number };

export interface ExecResult {
    code: number;
    stdout?: string;
    stderr?: string;
}

export interface FakeSubsystem {
    /** The node at an absolute, link-resolved path, or undefined when this subsystem does not own it. */
    resolve(k: FakeKernel, path: string): FakeNode | undefined;
    /** Names this subsystem adds to a directory that another part of the tree also lists (e.g. /dev). */
    extraEntries?(k: FakeKernel, dir: string): string[];
    /** Handle a program, or return undefined when it is not this subsystem's. */
    exec?(k: FakeKernel, argv: string[]): ExecResult | undefined;
    /** Accept a connection to a UNIX socket this subsystem serves (the fake QEMU's QMP), or undefined. */
    connect?(k: FakeKernel, path: string, session: FakeSession): Duplex | undefined;
}

/**
 * What a socket endpoint needs from the host that opened it: the machine as it is now (a file-backed fake
 * reloads it when another process changed it) and a way to save what the endpoint changed.
 */
export interface FakeSession {
    kernel(): FakeKernel;
    commit(k: FakeKernel): void;
}

export interface FakeFile {
    data: string;
    mode: number;
}

/** The whole machine as JSON. Subsystems keep their own state under `ext`. */
export interface FakeState {
    files: Record<string, FakeFile>;
    dirs: string[];
    /** path → PIDs holding it open (a running VM holds /dev/vfio/N). */
    openers: Record<string, number[]>;
    /** PID → command name, for messages that say which process holds a device. */
    processes: Record<string, string>;
    /** Faults to inject: the next write of `path` fails with `errno` (once). */
    faults: { path: string; errno: string; data?: string }[];
    /** Programs that ran, argv per call, for assertions. */
    execLog: string[][];
    ext: Record<string, any>;
}

export class FakeKernel {
    private subsystems: FakeSubsystem[] = [];

    constructor(public state: FakeState = { files: {}, dirs: [], openers: {}, processes: {}, faults: [], execLog: [], ext: {} }) {}

    /** Attach a subsystem; `first` puts it before the others (it answers a program, e.g. modprobe of its own module, first). */
    use(s: FakeSubsystem, opts: { first?: boolean } = {}): this {
        if (opts.first) this.subsystems.unshift(s);
        else this.subsystems.push(s);
        return this;
    }

    // ---------------------------------------------------------------- tree

    /** Resolve symbolic links in every component but the last (and in the last too when `follow`). */
    resolvePath(path: string, follow: boolean): string {
        const parts = path.split("/").filter(Boolean);
        let cur = "";
        for (let i = 0; i < parts.length; i++) {
            cur = cur + "/" + parts[i];
            const last = i === parts.length - 1;
            if (last && !follow) break;
            for (let hops = 0; hops < 8; hops++) {
                const node = this.nodeAt(cur);
                if (!node || node.kind !== "link") break;
                cur = absolutize(cur, node.target);
            }
        }
        return cur || "/";
    }

    /** The node at an already resolved path. */
    nodeAt(path: string): FakeNode | undefined {
        for (const s of this.subsystems) {
            const n = s.resolve(this, path);
            if (n) return n;
        }
        const proc = /^\/proc\/(\d+)\/comm$/.exec(path);
        if (proc && this.state.processes[proc[1]]) return { kind: "file", read: () => this.state.processes[proc[1]] + "\n", mode: 0o644 };
        const f = this.state.files[path];
        if (f) return { kind: "file", read: () => f.data, mode: f.mode };
        if (this.isPlainDir(path)) return { kind: "dir", list: () => this.plainEntries(path) };
        return undefined;
    }

    node(path: string, follow = true): FakeNode | undefined {
        return this.nodeAt(this.resolvePath(path, follow));
    }

    private isPlainDir(path: string): boolean {
        if (path === "/") return true;
        if (this.state.dirs.includes(path)) return true;
        const prefix = path + "/";
        return Object.keys(this.state.files).some((p) => p.startsWith(prefix)) || this.state.dirs.some((d) => d.startsWith(prefix));
    }

    private plainEntries(dir: string): string[] {
        const prefix = dir === "/" ? "/" : dir + "/";
        const names = new Set<string>();
        for (const p of [...Object.keys(this.state.files), ...this.state.dirs]) {
            if (p.startsWith(prefix)) names.add(p.slice(prefix.length).split("/")[0]);
        }
        for (const s of this.subsystems) for (const e of s.extraEntries?.(this, dir) ?? []) names.add(e);
        return [...names].filter(Boolean);
    }

    // ---------------------------------------------------------------- operations (what a Host batch does)

    read(path: string): string {
        const n = this.node(path);
        if (!n) throw new FakeErrno("ENOENT");
        if (n.kind === "dir") throw new FakeErrno("EISDIR");
        if (n.kind === "char") throw new FakeErrno("EINVAL");
        if (n.kind !== "file" || !n.read) throw new FakeErrno("EIO");
        return n.read();
    }

    readlink(path: string): string {
        const n = this.node(path, false);
        if (!n || n.kind !== "link") throw new FakeErrno("EINVAL", "not a link");
        return this.resolvePath(path, true);
    }

    list(path: string): string[] {
        const n = this.node(path);
        if (!n) throw new FakeErrno("ENOENT");
        if (n.kind !== "dir") throw new FakeErrno("ENOTDIR");
        return [...new Set(n.list())].sort();
    }

    stat(path: string): string {
        const n = this.node(path);
        if (!n) throw new FakeErrno("ENOENT");
        switch (n.kind) {
            case "dir":
                return "directory 755 0 0 0 0:0";
            case "char":
                return `character special file ${n.mode.toString(8)} ${n.uid ?? 0} ${n.gid ?? 0} 0 ${n.major.toString(16)}:${n.minor.toString(16)}`;
            case "file": {
                const size = n.size ?? (n.read ? Buffer.byteLength(safeRead(n)) : 4096);
                return `regular file ${(n.mode ?? 0o644).toString(8)} ${n.uid ?? 0} ${n.gid ?? 0} ${size} 0:0`;
            }
            default:
                return "symbolic link 777 0 0 0 0:0";
        }
    }

    write(path: string, data: string): void {
        const resolved = this.resolvePath(path, true);
        const fault = this.state.faults.findIndex((f) => (f.path === path || f.path === resolved) && (f.data === undefined || f.data === data.replace(/\n$/, "")));
        if (fault >= 0) {
            const [f] = this.state.faults.splice(fault, 1);
            throw new FakeErrno(f.errno);
        }
        const n = this.nodeAt(resolved);
        if (!n) {
            // Like `>`: a regular file is created in an existing plain directory, nowhere in sysfs.
            if (resolved.startsWith("/sys/") || resolved.startsWith("/proc/")) throw new FakeErrno("ENOENT");
            this.put(resolved, data, 0o644);
            return;
        }
        if (n.kind === "file" && n.write) return n.write(data);
        if (n.kind === "file" && this.state.files[resolved]) {
            this.state.files[resolved].data = data;
            return;
        }
        if (n.kind === "dir") throw new FakeErrno("EISDIR");
        throw new FakeErrno("EACCES");
    }

    put(path: string, data: string, mode: number): void {
        const dir = path.slice(0, path.lastIndexOf("/")) || "/";
        if (path.startsWith("/sys/") || path.startsWith("/proc/")) throw new FakeErrno("EACCES");
        if (!this.isPlainDir(dir)) throw new FakeErrno("ENOENT");
        this.state.files[path] = { data, mode };
    }

    mkdir(path: string): void {
        if (path.startsWith("/sys/") || path.startsWith("/proc/")) throw new FakeErrno("EACCES");
        let cur = "";
        for (const part of path.split("/").filter(Boolean)) {
            cur += "/" + part;
            if (this.state.files[cur]) throw new FakeErrno("ENOTDIR");
            if (!this.state.dirs.includes(cur)) this.state.dirs.push(cur);
        }
    }

    remove(path: string): void {
        delete this.state.files[path];
    }

    openers(path: string): number[] {
        return [...(this.state.openers[path] ?? [])].sort((a, b) => a - b);
    }

    exec(argv: string[]): ExecResult {
        this.state.execLog.push(argv);
        for (const s of this.subsystems) {
            const r = s.exec?.(this, argv);
            if (r) return r;
        }
        if (argv[0] === "true") return { code: 0 };
        if (argv[0] === "cat" && argv.length === 2) {
            try {
                return { code: 0, stdout: this.read(argv[1]) };
            } catch (e) {
                return { code: 1, stderr: `cat: ${argv[1]}: ${(e as Error).message}` };
            }
        }
        return { code: 127, stderr: `${argv[0]}: command not found` };
    }

    /** Connect to the UNIX socket at `path`; ENOENT when nothing is there, ECONNREFUSED when nobody listens. */
    connect(path: string, session: FakeSession): Duplex {
        for (const s of this.subsystems) {
            const d = s.connect?.(this, path, session);
            if (d) return d;
        }
        throw new FakeErrno(this.node(path) ? "ECONNREFUSED" : "ENOENT", `cannot connect to ${path}`);
    }

    // ---------------------------------------------------------------- test controls

    /** A process (a VM) opens `path`; returns its PID. */
    hold(path: string, comm = "qemu-system-x86"): number {
        // PIDs are never reused within a machine's life, as on Linux until the counter wraps.
        const pid = (this.state.ext.nextPid = ((this.state.ext.nextPid as number | undefined) ?? 1000) + 1);
        this.state.processes[String(pid)] = comm;
        (this.state.openers[path] ??= []).push(pid);
        return pid;
    }

    release(pid: number): void {
        for (const p of Object.keys(this.state.openers)) {
            this.state.openers[p] = this.state.openers[p].filter((x) => x !== pid);
            if (this.state.openers[p].length === 0) delete this.state.openers[p];
        }
        delete this.state.processes[String(pid)];
    }

    /** The next write of `path` (optionally only of `data`) fails with `errno`. */
    injectFault(path: string, errno: string, data?: string): void {
        this.state.faults.push({ path, errno, data });
    }

    ext<T>(key: string, init: () => T): T {
        return (this.state.ext[key] ??= init());
    }
}

function safeRead(n: { read?: () => string }): string {
    try {
        return n.read?.() ?? "";
    } catch {
        return "";
    }
}

/** Join a link target (relative or absolute) onto the link's own path. */
export function absolutize(linkPath: string, target: string): string {
    if (target.startsWith("/")) return target;
    const parts = linkPath.split("/").filter(Boolean);
    parts.pop();
    for (const t of target.split("/")) {
        if (t === "..") parts.pop();
        else if (t && t !== ".") parts.push(t);
    }
    return "/" + parts.join("/");
}
