/**
 * MdevInstance through the real dynamic-provider plugin, as the Pulumi engine drives it, against a fake lab machine
 * in a state file (mtty and mbochs as the lab loads them; the plugin and the test see the same machine).
 */
import { mdev } from "../fake/mdev";
import { CheckFailedError, Engine, ResourceDecl, UNKNOWN, serializedProvider, fakeMachineSuite } from "./harness";

const TYPE = "pulumi-nodejs:dynamic/vfio:MdevInstance";
const U = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const fake = fakeMachineSuite();

const machine = fake.machine;
const editMachine = fake.edit;
const mdevs = () => Object.values(mdev(machine()).devices).map((d) => `${d.uuid}:${d.type}`);
const vgpu = (inputs: Record<string, unknown> = {}): ResourceDecl => ({ name: "vgpu", kind: "mdevInstance", type: TYPE, inputs: { parent: "mtty", type: "mtty-2", uuid: U, ...inputs } });


test("the stored provider is a thin closure naming mdevInstance", async () => {
    const text = await serializedProvider("mdevInstance");
    expect(text).toContain('require("pulumi-vfio/provider")');
    expect(text).toContain('kind: "mdevInstance"');
    expect(text.length).toBeLessThan(4000);
});

test("preview shows the chosen type and capacity and changes nothing; up creates; a second up is a no-op", async () => {
    const engine = new Engine(fake.plugin);
    const [step] = await engine.preview([{ ...vgpu(), inputs: { parent: "mbochs", vram: { min: 10 }, uuid: U } }]);
    expect(step.op).toBe("create");
    expect(step.inputs).toMatchObject({ parentDevice: "mbochs", typeId: "mbochs-medium", plan: [`create mdev ${U} of type mbochs-medium on mbochs; 15 more can be created after it`] });
    expect(mdevs()).toEqual([]);

    expect((await engine.up([vgpu()])).map((s) => s.op)).toEqual(["create"]);
    const st = engine.get("vgpu")!;
    expect(st.id).toBe(U);
    expect(st.outputs).toMatchObject({ typeId: "mtty-2", typeName: "Dual port serial", sysfsPath: `/sys/bus/mdev/devices/${U}`, availableInstances: 11 });
    expect(mdevs()).toEqual([`${U}:mtty-2`]);
    expect((await engine.up([vgpu()])).map((s) => s.op)).toEqual(["same"]);
});

test("refresh: a removed mdev leaves the state and up makes it again; a changed type is replaced (old one removed first)", async () => {
    const engine = new Engine(fake.plugin);
    await engine.up([vgpu()]);
    editMachine((k) => k.write(`/sys/bus/mdev/devices/${U}/remove`, "1"));
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-gone"]);
    expect((await engine.up([vgpu()])).map((s) => s.op)).toEqual(["create"]);
    expect(mdevs()).toEqual([`${U}:mtty-2`]);

    editMachine((k) => {
        k.write(`/sys/bus/mdev/devices/${U}/remove`, "1");
        k.write("/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", U);
    });
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
    expect(engine.get("vgpu")!.outputs.typeId).toBe("mtty-1");
    const steps = await engine.up([vgpu()]);
    expect(steps.map((s) => [s.op, s.replaces])).toEqual([["replace", ["type"]]]);
    expect(mdevs()).toEqual([`${U}:mtty-2`]);

    expect((await engine.up([vgpu({ persistent: true })])).map((s) => s.op)).toEqual(["update"]);
    expect(machine().state.files[`/etc/mdevctl.d/mtty/${U}`]).toBeDefined();
    await engine.destroy();
    expect(mdevs()).toEqual([]);
    expect(machine().state.files[`/etc/mdevctl.d/mtty/${U}`]).toBeUndefined();
});

test("bad input fails at preview with the field named, and nothing changes", async () => {
    editMachine((k) => k.write("/sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create", "00000000-0000-4000-8000-000000000001"));
    const cases: [Record<string, unknown>, string, RegExp][] = [
        [{ parent: "nvidia0" }, "parent", /no mdev parent "nvidia0" on this host; mdev parents on this host \(\/sys\/class\/mdev_bus\): mbochs, mtty/],
        [{ type: "mtty-9" }, "type", /parent mtty has no mdev type "mtty-9"; its types: mtty-1/],
        [{ parent: "mbochs", type: undefined, vram: { min: 20, max: 30 } }, "vram", /matches no type of mbochs; types and their video memory: mbochs-small 4 MiB, mbochs-medium 16 MiB, mbochs-large 64 MiB/],
        [{ uuid: "83b8f4f2-zzzz" }, "uuid", /is not a UUID/],
        [{ uuid: "00000000-0000-4000-8000-000000000001" }, "uuid", /already an mdev of type mbochs-small on parent mbochs/],
    ];
    for (const [inputs, property, reason] of cases) {
        const err = await new Engine(fake.plugin).preview([vgpu(inputs)]).catch((e) => e);
        expect(err).toBeInstanceOf(CheckFailedError);
        expect((err as CheckFailedError).failures.find((f) => f.property === property)?.reason).toMatch(reason);
    }
    expect(mdevs()).toEqual(["00000000-0000-4000-8000-000000000001:mbochs-small"]);
});

test("preview tolerates unknown inputs", async () => {
    const urn = "urn:pulumi:dev::harness::" + TYPE + "::vgpu";
    const checked = await fake.plugin.check(urn, {}, { parent: UNKNOWN, type: "mtty-1", uuid: UNKNOWN, __provider: await serializedProvider("mdevInstance") });
    expect(checked.failures).toEqual([]);
    expect(checked.inputs.parent).toBe(UNKNOWN);
});

test("destroy refuses while a VM holds the mdev's group, and succeeds once it has stopped", async () => {
    const engine = new Engine(fake.plugin);
    await engine.up([vgpu()]);
    const group = engine.get("vgpu")!.outputs.iommuGroup;
    let pid = 0;
    editMachine((k) => (pid = k.hold(`/dev/vfio/${group}`, "qemu-system-x86")));
    await expect(engine.destroy()).rejects.toThrow(/refusing to remove mdev .*held open by PID \d+ \(qemu-system-x86\)/);
    expect(mdevs()).toEqual([`${U}:mtty-2`]);
    editMachine((k) => k.release(pid));
    await engine.destroy();
    expect(mdevs()).toEqual([]);
});
