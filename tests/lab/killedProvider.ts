/**
 * A provider process that is SIGKILLed in the middle of its change, for the lab's crash tests: run as a child
 * (`node dist/tests/lab/killedProvider.js`), it reads `{connection, phase, after}` as JSON on stdin and runs an
 * IommuBinding create (phase "create"), or a create and then a delete (phase "delete", printing the create's outputs
 * first as `OUTS <json>`), against the lab over SSH. Of the change's batch, only the ops up to and including the
 * first one that matches `after` (a write's path and data) are sent to the host; once their results are back, the
 * process kills itself with SIGKILL. The remote interpreter has received nothing more, so the host is left exactly
 * at that point, as by a provider killed there. Test-only: the provider knows nothing of it.
 */
import { InterceptingHost } from "../fake/intercepting";
import { SshHost } from "../../provider/host/ssh";
import type { Host, Op, OpResult, RunOptions } from "../../provider/host/types";
import { check, create, remove } from "../../provider/iommuBinding";
import type { LabConnection } from "./lab";

export interface KillPoint {
    path: string;
    data: string;
}

export interface KilledProviderInput {
    connection: LabConnection;
    phase: "create" | "delete";
    after: KillPoint;
    device: string;
}

/** Forwards every batch to `inner`; the batch holding the kill point is cut after it, and the process dies. */
class KillingHost extends InterceptingHost {
    armed = false;
    constructor(
        inner: Host,
        private readonly after: KillPoint,
    ) {
        super(inner);
    }
    protected async runOn(target: Host, ops: Op[], opts?: RunOptions): Promise<OpResult[]> {
        const at = this.armed ? ops.findIndex((o) => o.op === "write" && o.path === this.after.path && o.data === this.after.data) : -1;
        if (at < 0) return target.run(ops, opts);
        const r = await target.run(ops.slice(0, at + 1), opts);
        process.stderr.write(`killed after ${at + 1} of ${ops.length} ops: ${JSON.stringify(r.map((x) => x.ok))}\n`);
        process.kill(process.pid, "SIGKILL");
        return new Promise(() => undefined);
    }
}

async function main(input: KilledProviderInput): Promise<void> {
    const host = new KillingHost(new SshHost(input.connection), input.after);
    const c = await check({}, { device: input.device }, host);
    if (c.failures.length) throw new Error(JSON.stringify(c.failures));
    if (input.phase === "create") host.armed = true;
    const { outs } = await create(c.inputs, host);
    if (input.phase === "create") throw new Error("the create finished: the kill point was never reached");
    process.stdout.write(`OUTS ${JSON.stringify(outs)}\n`);
    host.armed = true;
    await remove(outs.address, outs, host);
    throw new Error("the delete finished: the kill point was never reached");
}

if (require.main === module) {
    let text = "";
    process.stdin.on("data", (d) => (text += d));
    process.stdin.on("end", () =>
        main(JSON.parse(text)).catch((e) => {
            process.stderr.write(`${(e as Error).message}\n`);
            process.exit(2);
        }),
    );
}
