/**
 * PassthroughVm `backend: libvirt` over SSH into the lab VM: define+start→running and shutdown→undefined by the
 * provider, interleaved with the same steps typed by hand with virsh over the same SSH connection (the domain XML
 * the provider's preview shows, written to a file, `virsh define` + `virsh start` in one batch; `virsh destroy` +
 * `virsh undefine --nvram` in another). The provider's cost is its locked facts batch (bindings, groups, /dev/vfio
 * openers, the domain's state and definition) and the preflight; libvirt's own start is the same for both.
 * shutdownTimeoutSeconds is 0: the guest has no OS to honour an ACPI shutdown, so both sides destroy at once.
 */
import * as binding from "../../provider/iommuBinding";
import { SshHost } from "../../provider/host/ssh";
import { Op } from "../../provider/host/types";
import { check, create, remove } from "../../provider/passthroughVm";
import { LIBVIRT_URI } from "../../provider/libvirt/virsh";
import type { LabHandle } from "../lab/lab";
import { BenchRow, median } from "./types";

const NAME = "bench-domain";
const INPUTS = {
    name: NAME,
    backend: "libvirt",
    accel: "tcg",
    cpu: { cores: 1 },
    memoryMb: 256,
    network: { mode: "none" },
    devices: ["01:00.0"],
    sharedMemory: { path: "/dev/shm/bench-lv", sizeMb: 32 },
    shutdownTimeoutSeconds: 0,
};

const now = () => Number(process.hrtime.bigint()) / 1e6;
const virsh = (...args: string[]): Op => ({ op: "exec", argv: ["virsh", "-c", LIBVIRT_URI, ...args] });

export async function benchLibvirt(lab: LabHandle, iterations = 5): Promise<BenchRow[]> {
    const host = new SshHost(lab.connection);
    const gpu = await (async () => {
        const c = await binding.check({}, { device: "01:00.0" }, host);
        if (c.failures.length) throw new Error(JSON.stringify(c.failures));
        return (await binding.create(c.inputs, host)).outs;
    })();
    try {
        const checked = await check({}, INPUTS, host);
        if (checked.failures.length) throw new Error(JSON.stringify(checked.failures));
        const file = `/root/${NAME}.xml`;
        const byHandStart: Op[] = [{ op: "put", path: file, data: checked.inputs.domainXml!, mode: 0o600 }, virsh("define", file), virsh("start", NAME)];
        const byHandStop: Op[] = [virsh("destroy", NAME), virsh("undefine", "--nvram", NAME)];
        const t = { create: [] as number[], del: [] as number[], handStart: [] as number[], handStop: [] as number[], createTrips: [] as number[], deleteTrips: [] as number[] };
        const provider = async (timed: boolean) => {
            let trips = host.roundTrips;
            let s = now();
            const { outs } = await create(checked.inputs, host);
            if (timed) t.create.push(now() - s), t.createTrips.push(host.roundTrips - trips);
            if (outs.status !== "running") throw new Error(`domain not running: ${outs.status}`);
            trips = host.roundTrips;
            s = now();
            await remove(NAME, outs, host);
            if (timed) t.del.push(now() - s), t.deleteTrips.push(host.roundTrips - trips);
        };
        const byHand = async (timed: boolean) => {
            let s = now();
            const r = await host.run(byHandStart, { stopOnError: true });
            if (timed) t.handStart.push(now() - s);
            const bad = r.find((x) => !x.ok);
            if (bad) throw new Error(`virsh by hand failed: ${bad.message}`);
            s = now();
            const q = await host.run(byHandStop);
            if (timed) t.handStop.push(now() - s);
            const badStop = q.find((x) => !x.ok);
            if (badStop) throw new Error(`virsh destroy/undefine by hand failed: ${badStop.message}`);
        };
        // One untimed warm-up of each (libvirtd is socket-activated: its first client starts it), then interleaved,
        // the order swapped every iteration.
        await provider(false);
        await byHand(false);
        for (let i = 0; i < iterations; i++) {
            if (i % 2) {
                await byHand(true);
                await provider(true);
            } else {
                await provider(true);
                await byHand(true);
            }
        }
        const hs = median(t.handStart);
        const hq = median(t.handStop);
        return [
            { name: "libvirt define+start→running (provider over SSH)", medianMs: median(t.create), ratio: median(t.create) / hs, baseline: "virsh by hand", target: 1.1, roundTrips: median(t.createTrips) },
            { name: "virsh define + start by hand (one batch, same SSH)", medianMs: hs, roundTrips: 1 },
            { name: "libvirt shutdown→undefined (provider, timeout 0)", medianMs: median(t.del), ratio: median(t.del) / hq, baseline: "virsh by hand", target: 1.1, roundTrips: median(t.deleteTrips) },
            { name: "virsh destroy + undefine --nvram by hand (one batch)", medianMs: hq, roundTrips: 1 },
        ];
    } finally {
        await host.run([{ op: "exec", argv: ["sh", "-c", `virsh -c ${LIBVIRT_URI} destroy ${NAME}; virsh -c ${LIBVIRT_URI} undefine --nvram ${NAME}; rm -rf /run/pulumi-vfio /dev/shm/bench-lv /root/${NAME}.xml`], optional: true }]);
        await binding.remove(gpu.address, gpu, host).catch(() => undefined);
        await host.close();
    }
}
