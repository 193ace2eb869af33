/**
 * A Host decorator that fails one chosen write as if the kernel had refused it, and really runs everything before
 * it. Lets a lab test make "the second member fail" at an exact point and watch the rollback act on a real kernel.
 */
import { InterceptingHost } from "../fake/intercepting";
import type { Host, Op, OpResult, RunOptions } from "../../provider/host/types";

export class FaultyHost extends InterceptingHost {
    private armed = true;

    constructor(
        inner: Host,
        private readonly fault: { path: string; errno: string },
    ) {
        super(inner);
    }

    /** Batches on `inner` (or on its locked section's host), the one chosen write failed. */
    protected async runOn(inner: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
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
}
