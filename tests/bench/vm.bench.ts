/**
 * PassthroughVm create→running and delete, over SSH into the lab VM, interleaved with starting the same QEMU
 * command by hand over the same SSH connection: the provider's cost is its preflight, the QMP verification and
 * the graceful stop, against one `qemu-system-x86_64 ... -daemonize` and one QMP `quit` through socat.
 */
import * as binding from "../../provider/iommuBinding";
import { SshHost } from "../../provider/host/ssh";
import { Op } from "../../provider/host/types";
import { check, create, remove } from "../../provider/passthroughVm";
import type { LabHandle } from "../lab/lab";
import { BenchRow, median } from "./types";

const NAME = "bench-vm";
const INPUTS = {
    name: NAME,
    accel: "tcg",
    cpu: { cores: 1 },
    memoryMb: 256,
    network: { mode: "none" },
    devices: ["01:00.0"],
    sharedMemory: { path: "/dev/shm/bench-lg", sizeMb: 32 },
    shutdownTimeoutSeconds: 0,
};

const now = () => Number(process.hrtime.bigint()) / 1e6;

export async function benchVm(lab: LabHandle, iterations = 5): Promise<BenchRow[]> {
    const host = new SshHost(lab.connection);
    const gpu = await (async () => {
        const c = await binding.check({}, { device: "01:00.0" }, host);
        if (c.failures.length) throw new Error(JSON.stringify(c.failures));
        return (await binding.create(c.inputs, host)).outs;
    })();
    try {
        const checked = await check({}, INPUTS, host);
        if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
        const argv = checked.inputs.commandLine!;
        const runDir = `/run/pulumi-vfio/vm/${NAME}`;
        const sock = `${runDir}/qmp.sock`;
        const pidFile = `${runDir}/qemu.pid`;
        const byHandStart: Op[] = [{ op: "mkdir", path: runDir, mode: 0o700 }, { op: "exec", argv }];
        // What a user types to stop it: QMP quit through socat, then wait for the process to go.
        const byHandStop: Op[] = [
            {
                op: "exec",
                argv: ["sh", "-c", `p=$(cat ${pidFile}); printf '{"execute":"qmp_capabilities"}\\n{"execute":"quit"}\\n' | socat - UNIX-CONNECT:${sock} >/dev/null; while kill -0 $p 2>/dev/null; do sleep 0.05; done`],
            },
        ];
        const t = { create: [] as number[], del: [] as number[], handStart: [] as number[], handStop: [] as number[], createTrips: [] as number[], deleteTrips: [] as number[] };
        for (let i = 0; i < iterations; i++) {
            let trips = host.roundTrips;
            let s = now();
            const { outs } = await create(checked.inputs, host);
            t.create.push(now() - s);
            t.createTrips.push(host.roundTrips - trips);
            if (outs.status !== "running") throw new Error(`VM not running: ${outs.status}`);
            trips = host.roundTrips;
            s = now();
            await remove(NAME, outs, host);
            t.del.push(now() - s);
            t.deleteTrips.push(host.roundTrips - trips);

            s = now();
            const r = await host.run(byHandStart, { stopOnError: true });
            t.handStart.push(now() - s);
            if (!r[1].ok) throw new Error(`QEMU by hand failed: ${r[1].message}`);
            s = now();
            const q = await host.run(byHandStop);
            t.handStop.push(now() - s);
            if (!q[0].ok) throw new Error(`stopping by hand failed: ${q[0].message}`);
        }
        const hs = median(t.handStart);
        const hq = median(t.handStop);
        return [
            { name: "PassthroughVm create→running (provider over SSH)", medianMs: median(t.create), ratio: median(t.create) / hs, baseline: "QEMU started by hand", roundTrips: median(t.createTrips) },
            { name: "same QEMU command by hand (one exec over the same SSH)", medianMs: hs, roundTrips: 1 },
            { name: "PassthroughVm delete (powerdown, timeout 0, quit)", medianMs: median(t.del), ratio: median(t.del) / hq, baseline: "QMP quit by hand", roundTrips: median(t.deleteTrips) },
            { name: "QMP quit by hand (socat) and wait for exit", medianMs: hq, roundTrips: 1 },
        ];
    } finally {
        await host.run([{ op: "exec", argv: ["sh", "-c", `p=$(cat /run/pulumi-vfio/vm/${NAME}/qemu.pid 2>/dev/null) && kill -9 $p; rm -rf /run/pulumi-vfio /var/lib/pulumi-vfio /dev/shm/bench-lg`], optional: true }]);
        await binding.remove(gpu.address, gpu, host).catch(() => undefined);
        await host.close();
    }
}
