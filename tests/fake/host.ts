/**
 * A {@link Host} over a {@link FakeKernel}. Batches run synchronously against the model; a write the real kernel
 * would block on forever reports ETIMEDOUT at once, exactly what the real hosts report after their time limit.
 *
 * With a state file, every batch loads the machine from the file and saves it back, so several processes (the
 * test and the dynamic-provider plugin it drives) share one fake machine. Hosts in one process share the loaded
 * kernel object, so concurrent resources see each other's changes as on a real machine.
 */
import * as fs from "fs";
import { Duplex } from "stream";
import { FakeErrno, FakeHang, FakeKernel, FakeState } from "./kernel";
import { lockedHost } from "../../provider/host/lock";
import { Host, Op, OpResult, RunOptions, assertSafePath, isGuardRead, isMutation, strerror } from "../../provider/host/types";

export class FakeHost implements Host {
    readonly name = "fake";
    private trips = 0;
    private lockChain: Promise<unknown> = Promise.resolve();

    /** @param source the kernel, or a function returning it (loaded per batch from a state file). */
    constructor(private readonly source: FakeKernel | (() => FakeKernel), private readonly persist?: (k: FakeKernel) => void) {}

    get roundTrips(): number {
        return this.trips;
    }

    get kernel(): FakeKernel {
        return typeof this.source === "function" ? this.source() : this.source;
    }

    async run(ops: Op[], opts: RunOptions = {}): Promise<OpResult[]> {
        if (ops.length === 0) return [];
        this.trips++;
        const k = this.kernel;
        const results: OpResult[] = [];
        let stopped = false;
        for (const op of ops) {
            if (stopped) {
                results.push({ ok: false, data: "", skipped: true });
                continue;
            }
            if (op.op !== "exec") assertSafePath(op.path);
            const r = isGuardRead(op) ? expectation(this.one(k, op), op.expect) : this.one(k, op);
            results.push(r);
            if (r.errno === "ETIMEDOUT") stopped = true;
            else if (!r.ok && opts.stopOnError && isMutation(op) && !("optional" in op && op.optional)) stopped = true;
        }
        this.persist?.(k);
        return results;
    }

    private one(k: FakeKernel, op: Op): OpResult {
        try {
            switch (op.op) {
                case "read":
                    return { ok: true, data: k.read(op.path) };
                case "readlink":
                    return { ok: true, data: k.readlink(op.path) };
                case "list":
                    return { ok: true, data: k.list(op.path).map((n) => n + "\n").join("") };
                case "stat":
                    return { ok: true, data: k.stat(op.path) };
                case "write":
                    k.write(op.path, op.data);
                    return { ok: true, data: "" };
                case "put":
                    k.put(op.path, op.data, op.mode);
                    return { ok: true, data: "" };
                case "mkdir":
                    k.mkdir(op.path);
                    return { ok: true, data: "" };
                case "remove":
                    k.remove(op.path);
                    return { ok: true, data: "" };
                case "openers":
                    return { ok: true, data: k.openers(op.path).map((p) => p + "\n").join("") };
                case "groupHolders": {
                    let link: string;
                    try {
                        link = k.readlink(`${op.path}/iommu_group`);
                    } catch {
                        return { ok: true, data: "" };
                    }
                    const node = `/dev/vfio/${link.slice(link.lastIndexOf("/") + 1)}`;
                    const pids = k.openers(node);
                    const data = pids.map((p) => p + "\n").join("");
                    if (pids.length && op.guard) return { ok: false, data, errno: "EBUSY", message: `${node}: ${strerror("EBUSY")}` };
                    return { ok: true, data };
                }
                case "exec": {
                    const r = k.exec(op.argv);
                    return { ok: r.code === 0, data: r.stdout ?? "", code: r.code, message: (r.stderr ?? "").trim() || undefined };
                }
            }
        } catch (e) {
            if (e instanceof FakeHang) return { ok: false, data: "", errno: "ETIMEDOUT", message: e.message };
            if (e instanceof FakeErrno) {
                const where = "path" in op ? `${op.path}: ` : "";
                return { ok: false, data: "", errno: e.errno, message: op.op === "write" ? `write error: ${strerror(e.errno)}` : where + e.message };
            }
            throw e;
        }
    }

    /** As on the real hosts, the lock costs no round trip of its own (it rides on the section's first batch), and
     *  the section's host is good for the section only. */
    async withLock<T>(fn: (locked: Host) => Promise<T>): Promise<T> {
        const prev = this.lockChain;
        let release!: () => void;
        this.lockChain = new Promise<void>((r) => (release = r));
        await prev;
        const view = lockedHost(this, (ops, opts) => this.run(ops, opts));
        try {
            return await fn(view.host);
        } finally {
            view.end();
            release();
        }
    }

    /** The fake QEMU's in-memory QMP endpoint (a PassThrough pair); state it changes is saved like a batch's. */
    async openUnixSocket(path: string): Promise<Duplex> {
        assertSafePath(path);
        try {
            return this.kernel.connect(path, { kernel: () => this.kernel, commit: (k) => this.persist?.(k) });
        } catch (e) {
            if (e instanceof FakeErrno) throw Object.assign(new Error(`cannot connect to ${path}: ${e.errno}`), { code: e.errno });
            throw e;
        }
    }

    async close(): Promise<void> {
        /* nothing to release */
    }
}

/** A read with an expectation, as the interpreter judges it (see `Expect`): an absent path answers "". */
function expectation(r: OpResult, expected: string): OpResult {
    if (r.errno === "ETIMEDOUT") return r;
    const answer = r.ok ? r.data : "";
    const found = answer.replace(/\n+$/, "");
    return found === expected ? { ok: true, data: answer } : { ok: false, data: "", errno: "ESTALE", message: `found ${found.slice(0, 200).replace(/\n/g, " | ")}`.trim() };
}

const shared = new Map<string, FakeKernel>();

/**
 * A host over a fake machine stored in `stateFile` (JSON). `build` turns saved state into a kernel with its
 * subsystems attached (see `fakeLabKernel`).
 */
export function fileBackedFakeHost(stateFile: string, build: (state?: FakeState) => FakeKernel): FakeHost {
    const load = (): FakeKernel => {
        let k = shared.get(stateFile);
        const text = fs.existsSync(stateFile) ? fs.readFileSync(stateFile, "utf8") : undefined;
        if (!k || (text !== undefined && text !== JSON.stringify(k.state))) {
            k = build(text ? (JSON.parse(text) as FakeState) : undefined);
            shared.set(stateFile, k);
        }
        return k;
    };
    return new FakeHost(load, (k) => fs.writeFileSync(stateFile, JSON.stringify(k.state)));
}
