/**
 * Typed batch queries: several reads composed into one round trip, each handing back its own parsed result, so no
 * caller counts ops or slices results by offset.
 *
 *   const q = new BatchQuery();
 *   const cmdline = q.add([{ op: "read", path: "/proc/cmdline" }], ([r]) => (r.ok ? r.data : ""));
 *   const r = await q.run(host);
 *   cmdline(r) // string
 */
import { Host, Op, OpResult, RunOptions } from "./types";

/** A part of a query: given the whole batch's results, its own parsed value. */
export type Part<T> = (results: OpResult[]) => T;

export class BatchQuery {
    readonly ops: Op[] = [];

    /** Add `ops` to the batch; the returned function parses their results (in the same order) out of the batch's. */
    add<T>(ops: Op[], parse: (results: OpResult[]) => T): Part<T> {
        const at = this.ops.length;
        this.ops.push(...ops);
        return (results) => parse(results.slice(at, at + ops.length));
    }

    /** One op whose result is parsed alone. */
    one<T>(op: Op, parse: (result: OpResult) => T): Part<T> {
        return this.add([op], ([r]) => parse(r));
    }

    /** Run the batch in one round trip. */
    run(host: Host, opts?: RunOptions): Promise<OpResult[]> {
        return host.run(this.ops, opts);
    }
}

/** A read's text, or undefined when the file is absent or unreadable. */
export const textOf = (r: OpResult | undefined): string | undefined => (r?.ok ? r.data : undefined);
