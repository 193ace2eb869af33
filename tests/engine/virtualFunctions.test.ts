/**
 * VirtualFunctions (and an IommuBinding taking one of its VFs) through the real dynamic-provider plugin, against a
 * fake lab machine in a state file: the NVMe at 03:00.0 with sriov_totalvfs 4.
 */
import { pci } from "../fake/pci";
import { CheckFailedError, Engine, ResourceDecl, serializedProvider, fakeMachineSuite } from "./harness";

const TYPE = "pulumi-nodejs:dynamic/vfio:VirtualFunctions";
const PF = "0000:03:00.0";
const fake = fakeMachineSuite();

const machine = fake.machine;
const editMachine = fake.edit;
const sriov = () => pci(machine()).devices[PF].sriov!;
const vfs = (inputs: Record<string, unknown> = {}): ResourceDecl => ({ name: "nvme-vfs", kind: "virtualFunctions", type: TYPE, inputs: { physicalFunction: "03:00.0", count: 2, ...inputs } });
const bindVf = (device: string): ResourceDecl => ({ name: "vf0", kind: "iommuBinding", type: "pulumi-nodejs:dynamic/vfio:IommuBinding", inputs: { device } });


test("the stored provider is a thin closure naming virtualFunctions", async () => {
    const text = await serializedProvider("virtualFunctions");
    expect(text).toContain('kind: "virtualFunctions"');
    expect(text.length).toBeLessThan(4000);
});

test("preview names the VFs; up creates them; a VF goes to vfio-pci by IommuBinding; a count change updates; destroy undoes both", async () => {
    const engine = new Engine(fake.plugin);
    const [p] = await engine.preview([vfs()]);
    expect(p.inputs!.plan).toEqual([`${PF} sriov_drivers_autoprobe: 1 → 0 (new VFs stay without a host driver)`, `${PF} sriov_numvfs: 0 → 2; VFs 0000:03:00.1, 0000:03:00.2 appear`]);
    expect(sriov().numVfs).toBe(0);

    await engine.up([vfs()]);
    const outs = engine.get("nvme-vfs")!.outputs;
    expect(outs.addresses).toEqual(["0000:03:00.1", "0000:03:00.2"]);
    expect(engine.get("nvme-vfs")!.id).toBe(PF);

    await engine.up([vfs(), bindVf(outs.addresses[1])]);
    expect(pci(machine()).devices["0000:03:00.2"].driver).toBe("vfio-pci");
    expect(engine.get("vf0")!.outputs.vfioDevice).toBe(`/dev/vfio/${outs.groups[1]}`);

    // The binding goes first (it is no longer declared), then the VFs change through 0.
    const steps = await engine.up([vfs({ count: 3 })]);
    expect(steps.map((s) => s.op)).toEqual(["delete", "update"]);
    expect(sriov().numVfs).toBe(3);
    expect(engine.get("nvme-vfs")!.outputs.addresses).toHaveLength(3);

    editMachine((k) => k.write(`/sys/bus/pci/devices/${PF}/sriov_numvfs`, "0"));
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
    expect((await engine.up([vfs({ count: 3 })])).map((s) => s.op)).toEqual(["update"]);
    expect(sriov().numVfs).toBe(3);

    await engine.destroy();
    expect(sriov()).toMatchObject({ numVfs: 0, autoprobe: true });
});

test("bad input fails at preview with the field named, and nothing changes", async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
        [{ count: 9 }, "count", /count 9 is above sriov_totalvfs of 0000:03:00.0: the maximum is 4/],
        [{ physicalFunction: "02:00.0" }, "physicalFunction", /has no SR-IOV capability/],
        [{ physicalFunction: "zz:00.0" }, "physicalFunction", /is not a PCI address/],
        [{ count: -2 }, "count", /count: must be >= 0, not -2/],
    ];
    for (const [inputs, property, reason] of cases) {
        const err = await new Engine(fake.plugin).preview([vfs(inputs)]).catch((e) => e);
        expect(err).toBeInstanceOf(CheckFailedError);
        expect((err as CheckFailedError).failures.find((f) => f.property === property)?.reason).toMatch(reason);
    }
    expect(sriov()).toMatchObject({ numVfs: 0, autoprobe: true });
});
