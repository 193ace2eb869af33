/**
 * A Host decorator that fails one chosen write as if the kernel had refused it, and really runs everything before
 * it. Lets a lab test make "the second member fail" at an exact point and watch the rollback act on a real kernel.
 */
import { withLockThrough } from "../../provider/host/lock";
import type { Host, Op, OpResult, RunOptions } from "../../provider/host/types";

export class FaultyHost implements Host {
    private armed = true;

    constructor(
        private readonly inner: Host,
        private readonly fault: { path: string; errno: string },
    ) {}

    get name(): string {
        return this.inner.name;
    }

    get roundTrips(): number {
        return this.inner.roundTrips;
    }

    run(ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        return this.runOn(this.inner, ops, opts);
    }

    /** Batches on `inner` (or on its locked section's host), the one chosen write failed. */
    private async runOn(inner: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        const at = this.armed ? ops.findIndex((o) => o.op === "write" && o.path === this.fault.path) : -1;
        if (at < 0) return inner.run(ops, opts);
        this.armed = false;
        const before = at > 0 ? await inner.run(ops.slice(0, at), opts) : [];
        if (opts?.stopOnError && before.some((r) => r.skipped)) return [...before, ...ops.slice(at).map(() => ({ ok: false, data: "", skipped: true }))];
        const failed: OpResult = { ok: false, data: "", errno: this.fault.errno, message: `write error (injected): ${this.fault.errno}` };
        if (opts?.stopOnError) return [...before, failed, ...ops.slice(at + 1).map(() => ({ ok: false, data: "", skipped: true }))];
        const after = await inner.run(ops.slice(at + 1), opts);
        return [...before, failed, ...after];
    }

    openUnixSocket(path: string): Promise<import("stream").Duplex> {
        return this.inner.openUnixSocket(path);
    }

    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs?: number): Promise<T> {
        return withLockThrough(this, this.inner, (locked, ops, opts) => this.runOn(locked, ops, opts), fn, timeoutMs);
    }

    close(): Promise<void> {
        return this.inner.close();
    }
}
