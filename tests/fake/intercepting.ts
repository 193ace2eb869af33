/**
 * A Host decorator for tests that intercept batches (inject a refused write, cut a batch as a killed process would):
 * everything is forwarded to `inner`, and every batch — those of a locked section too, through `inner`'s locked host —
 * goes through the subclass's `runOn`, so the interception applies wherever the provider sends the batch.
 */
import { withLockThrough } from "../../provider/host/lock";
import type { Host, Op, OpResult, RunOptions } from "../../provider/host/types";

export abstract class InterceptingHost implements Host {
    constructor(protected readonly inner: Host) {}

    get name(): string {
        return this.inner.name;
    }

    get roundTrips(): number {
        return this.inner.roundTrips;
    }

    run(ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        return this.runOn(this.inner, ops, opts);
    }

    /** Run a batch on `target` (`inner`, or its locked section's host), intercepted as the subclass wants. */
    protected abstract runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]>;

    withLock<T>(fn: (locked: Host) => Promise<T>, timeoutMs?: number): Promise<T> {
        return withLockThrough(this, this.inner, (locked, ops, opts) => this.runOn(locked, ops, opts), fn, timeoutMs);
    }

    openUnixSocket(path: string): Promise<import("stream").Duplex> {
        return this.inner.openUnixSocket(path);
    }

    close(): Promise<void> {
        return this.inner.close();
    }
}
