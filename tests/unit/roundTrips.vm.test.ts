/**
 * Round trips of PassthroughVm (QEMU backend) on the fake lab machine: `npm run bench` measures these sequences
 * over SSH, so a refactor that adds a trip shows here first. QMP is its own channel (a stream on the same SSH
 * connection), not a batch: it is not counted.
 */
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import * as binding from "../../provider/iommuBinding";
import { check, create, read, remove } from "../../provider/passthroughVm";

const base = { name: "gpu-vm", accel: "tcg", cpu: { cores: 1 }, memoryMb: 256, network: { mode: "none" }, shutdownTimeoutSeconds: 0 };

async function trips<T>(host: FakeHost, f: () => Promise<T>): Promise<[number, T]> {
    const t0 = host.roundTrips;
    const v = await f();
    return [host.roundTrips - t0, v];
}

test.each<[string, Record<string, unknown>, [number, number, number, number]]>([
    // check: the named devices, then their groups' other members and /dev/vfio nodes.
    ["the VGA+audio group and a /dev/shm buffer", { devices: ["01:00.0"], sharedMemory: { path: "/dev/shm/lg", sizeMb: 32 } }, [2, 2, 1, 2]],
    ["no devices", {}, [1, 2, 1, 2]],
    // autostart: the unit is written and enabled in the start batch; delete disables it in the cleanup batch.
    ["autostart", { devices: ["01:00.0"], autostart: true }, [2, 2, 1, 2]],
])("QEMU backend, %s: check, create→running, read, delete round trips", async (_what, over, expected) => {
    const host = new FakeHost(fakeLabKernel());
    const b = await binding.check({}, { device: "01:00.0" }, host);
    await binding.create(b.inputs, host);
    const [c, checked] = await trips(host, () => check({}, { ...base, ...over }, host));
    expect(checked.failures).toEqual([]);
    const [cr, made] = await trips(host, () => create(checked.inputs, host));
    expect(made.outs.status).toBe("running");
    const [rd, seen] = await trips(host, () => read(made.id, made.outs, host));
    expect(seen.props?.status).toBe("running");
    const [rm] = await trips(host, () => remove(made.id, made.outs, host));
    const [, after] = await trips(host, () => read(made.id, made.outs, host));
    expect(after.props?.status).toBe("stopped");
    expect(host.kernel.state.files[`/run/pulumi-vfio/vm/gpu-vm/qemu.pid`]).toBeUndefined();
    expect([c, cr, rd, rm]).toEqual(expected);
});

test("a group that changed since check costs create one more round trip, and the VM gets the group as it is now", async () => {
    const host = new FakeHost(fakeLabKernel());
    const b = await binding.check({}, { device: "01:00.0" }, host);
    await binding.create(b.inputs, host);
    const checked = await check({}, { ...base, devices: ["01:00.0"] }, host);
    // As if check had resolved only the GPU (its audio function appeared later, e.g. after a rescan).
    const stale = { ...checked.inputs, hostDevices: checked.inputs.hostDevices!.slice(0, 1) };
    const [cr, made] = await trips(host, () => create(stale, host));
    expect(cr).toBe(3);
    expect(made.outs.hostDevices.map((d) => d.address)).toEqual(checked.inputs.hostDevices!.map((d) => d.address));
});
