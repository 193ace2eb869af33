/**
 * Round trips of MdevInstance and VirtualFunctions create/delete on the fake lab machine: `npm run bench` measures
 * these sequences, so a refactor that adds a trip shows here first.
 */
import { FakeHost } from "../fake/host";
import { fakeLabKernel } from "../fake/lab";
import { addNvidiaVgpuGpu } from "../fake/mdev";
import { check as mdevCheck, create as mdevCreate, remove as mdevRemove, read as mdevRead } from "../../provider/mdevInstance";
import { check as vfCheck, create as vfCreate, remove as vfRemove, read as vfRead } from "../../provider/virtualFunctions";

const U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

async function trips<T>(host: FakeHost, f: () => Promise<T>): Promise<[number, T]> {
    const t0 = host.roundTrips;
    const v = await f();
    return [host.roundTrips - t0, v];
}

test.each<[string, Record<string, unknown>, [number, number, number, number]]>([
    ["mtty by type", { parent: "mtty", type: "mtty-2", uuid: U1 }, [1, 1, 1, 1]],
    ["mbochs by vram", { parent: "mbochs", vram: { min: 10 }, uuid: U1 }, [2, 1, 1, 1]],
    ["mtty persistent", { parent: "mtty", type: "mtty-2", uuid: U1, persistent: true }, [1, 2, 1, 1]],
    ["mtty with attrs", { parent: "mtty", type: "mtty-1", uuid: U1, attrs: [] }, [1, 1, 1, 1]],
    ["NVIDIA vGPU 17+ by type", { parent: "0000:41:00.0", type: "1156", uuid: U1 }, [2, 6, 1, 2]],
    ["NVIDIA vGPU 17+ by vram", { parent: "0000:41:00.0", vram: { min: 4096 }, uuid: U1 }, [2, 6, 1, 2]],
])("MdevInstance %s: check, create, read, delete round trips", async (_what, inputs, expected) => {
    const k = fakeLabKernel();
    addNvidiaVgpuGpu(k);
    const host = new FakeHost(k);
    const [c, checked] = await trips(host, () => mdevCheck({}, inputs, host));
    expect(checked.failures).toEqual([]);
    const [cr, made] = await trips(host, () => mdevCreate(checked.inputs, host));
    const [rd] = await trips(host, () => mdevRead(made.id, made.outs, host));
    const [rm] = await trips(host, () => mdevRemove(made.id, made.outs, host));
    expect([c, cr, rd, rm]).toEqual(expected);
});

test("VirtualFunctions: check, create, read, delete round trips", async () => {
    const host = new FakeHost(fakeLabKernel());
    const inputs = { physicalFunction: "0000:03:00.0", count: 2 };
    const [c, checked] = await trips(host, () => vfCheck({}, inputs, host));
    expect(checked.failures).toEqual([]);
    const [cr, made] = await trips(host, () => vfCreate(checked.inputs, host));
    const [rd] = await trips(host, () => vfRead(made.id, made.outs, host));
    const [rm] = await trips(host, () => vfRemove(made.id, made.outs, host));
    expect([c, cr, rd, rm]).toEqual([1, 2, 2, 3]);
});
