/**
 * IommuBinding through the real dynamic-provider plugin, as the Pulumi engine drives it, against a fake lab
 * machine kept in a state file (the plugin and the test see the same machine).
 */
import { pci } from "../fake/pci";
import { CheckFailedError, Engine, ResourceDecl, UNKNOWN, serializedProvider, fakeMachineSuite } from "./harness";

const TYPE = "pulumi-nodejs:dynamic/vfio:IommuBinding";
const fake = fakeMachineSuite();

const machine = fake.machine;
const driverOf = (addr: string) => pci(machine()).devices[addr].driver;
const editMachine = fake.edit;
const gpu = (inputs: Record<string, unknown> = {}): ResourceDecl => ({ name: "gpu", kind: "iommuBinding", type: TYPE, inputs: { device: "01:00.0", ...inputs } });


test("the stored provider is a thin closure that requires the package by name and captures no secrets", async () => {
    const text = await serializedProvider("iommuBinding");
    expect(text).toContain('require("pulumi-vfio/provider")');
    expect(text).toContain('kind: "iommuBinding"');
    expect(text.length).toBeLessThan(4000);
    expect(text).not.toMatch(/PRIVATE KEY|password/i);
});

test("preview names every device that will change driver, and changes nothing", async () => {
    const engine = new Engine(fake.plugin);
    const steps = await engine.preview([gpu()]);
    expect(steps).toHaveLength(1);
    expect(steps[0].op).toBe("create");
    expect(steps[0].inputs!.address).toBe("0000:01:00.0");
    expect(steps[0].inputs!.plan).toEqual([
        "0000:01:00.0 (VGA controller 1234:1111): bochs-drm → vfio-pci",
        "0000:01:00.1 (Audio device 8086:2668): snd_hda_intel → vfio-pci",
        // What destroy can do about resets, per function: the GPU's only method is a bus reset its audio function prevents.
        "0000:01:00.0 (VGA controller 1234:1111): no reset of this function alone (reset_method: bus; a bus reset needs it alone on its bus, and 1 other function shares it) — only vfio-pci's reset of the whole bus at VM start/stop",
        "0000:01:00.1 (Audio device 8086:2668): no reset method (reset_method empty) — the device keeps its state between VMs",
    ]);
    expect(driverOf("0000:01:00.0")).toBe("bochs-drm");
    expect(driverOf("0000:01:00.1")).toBe("snd_hda_intel");
});

test("up binds the group, refresh sees drift, the next up repairs it, destroy restores the host drivers", async () => {
    const engine = new Engine(fake.plugin);
    expect((await engine.up([gpu()])).map((s) => s.op)).toEqual(["create"]);
    expect(driverOf("0000:01:00.0")).toBe("vfio-pci");
    expect(driverOf("0000:01:00.1")).toBe("vfio-pci");
    const st = engine.get("gpu")!;
    expect(st.id).toBe("0000:01:00.0");
    expect(st.outputs.vfioDevice).toBe("/dev/vfio/7");
    expect(st.outputs.members.map((m: any) => [m.address, m.previousDriver, m.driver])).toEqual([
        ["0000:01:00.0", "bochs-drm", "vfio-pci"],
        ["0000:01:00.1", "snd_hda_intel", "vfio-pci"],
    ]);

    // A second up with nothing changed is a no-op.
    expect((await engine.up([gpu()])).map((s) => s.op)).toEqual(["same"]);

    // Someone gives the audio function back to the host by hand.
    editMachine((k) => {
        const d = pci(k).devices["0000:01:00.1"];
        d.driver = "snd_hda_intel";
        d.override = null;
    });
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
    expect(engine.get("gpu")!.outputs.members[1].driver).toBe("snd_hda_intel");
    expect((await engine.up([gpu()])).map((s) => s.op)).toEqual(["update"]);
    expect(driverOf("0000:01:00.1")).toBe("vfio-pci");
    // The repair keeps the original host driver as what destroy restores.
    expect(engine.get("gpu")!.outputs.members[1].previousDriver).toBe("snd_hda_intel");

    expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete"]);
    expect(driverOf("0000:01:00.0")).toBe("bochs-drm");
    expect(driverOf("0000:01:00.1")).toBe("snd_hda_intel");
});

test("changing the driver updates in place; another device replaces (old group released first)", async () => {
    const engine = new Engine(fake.plugin);
    await engine.up([gpu()]);
    expect((await engine.up([gpu({ driver: "pci-stub" })])).map((s) => s.op)).toEqual(["update"]);
    expect(driverOf("0000:01:00.0")).toBe("pci-stub");
    expect(engine.get("gpu")!.outputs.vfioDevice).toBeNull();

    const steps = await engine.up([gpu({ device: "0000:02:00.0" })]);
    expect(steps.map((s) => [s.op, s.replaces])).toEqual([["replace", ["device"]]]);
    expect(driverOf("0000:01:00.0")).toBe("bochs-drm");
    expect(driverOf("0000:01:00.1")).toBe("snd_hda_intel");
    expect(driverOf("0000:02:00.0")).toBe("vfio-pci");
    await engine.destroy();
    expect(driverOf("0000:02:00.0")).toBeNull();
});

test("bad input fails at preview with the field named, and nothing changes", async () => {
    const engine = new Engine(fake.plugin);
    const cases: [Record<string, unknown>, string, RegExp][] = [
        [{ device: "../../etc" }, "device", /not a PCI address/],
        [{ device: "0000:07:00.0" }, "device", /no PCI device 0000:07:00.0/],
        [{ device: "00:10.0" }, "device", /PCI bridge .* stays on pcieport\. Bind the device behind it instead: 0000:01:00\.0, 0000:01:00\.1/],
        [{ device: "00:1f.2" }, "allowHostCritical", /^0000:00:1f\.0 \(ISA bridge 8086:2918, on lpc_ich\), in IOMMU group 6 with 0000:00:1f\.2, is the ISA\/LPC bridge/],
        [{ device: "00:03.0" }, "allowHostCritical", /holds the root filesystem \/ \(ext4 on \/dev\/vda\)/],
        [{ device: "00:01.0" }, "allowBootVga", /boot console GPU/],
        [{ device: "01:00.0", driver: "nvidia-fake" }, "driver", /neither registered/],
        [{ device: "01:00.0", wholeGroup: false }, "wholeGroup", /group 7 would not be viable.*01:00.1 is bound to snd_hda_intel/],
        [{ device: { vendor: "1234", device: "1111" } }, "device", /matches 2 devices: 0000:00:01.0.*0000:01:00.0/],
        [{ device: "01:00.0", colour: "red" }, "colour", /unknown key "colour"/],
    ];
    for (const [inputs, property, reason] of cases) {
        const err = await engine.preview([{ name: "gpu", kind: "iommuBinding", type: TYPE, inputs }]).catch((e) => e);
        expect(err).toBeInstanceOf(CheckFailedError);
        const f = (err as CheckFailedError).failures.find((x) => x.property === property);
        expect(f?.reason).toMatch(reason);
    }
    expect(driverOf("0000:01:00.0")).toBe("bochs-drm");
    expect(["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3", "0000:00:03.0"].map(driverOf)).toEqual(["lpc_ich", "ahci", "i801_smbus", "virtio-pci"]);
});

test("a selector with an index resolves to one address, shown in preview", async () => {
    const engine = new Engine(fake.plugin);
    const steps = await engine.up([{ name: "gpu", kind: "iommuBinding", type: TYPE, inputs: { device: { vendor: "0x1234", device: "1111", index: 1 } } }]);
    expect(steps[0].inputs!.address).toBe("0000:01:00.0");
    expect(driverOf("0000:01:00.0")).toBe("vfio-pci");
    await engine.destroy();
});

test("preview tolerates unknown inputs (values computed during the update)", async () => {
    const urn = "urn:pulumi:dev::harness::" + TYPE + "::gpu";
    const news = { device: UNKNOWN, connection: UNKNOWN, __provider: await serializedProvider("iommuBinding") };
    const checked = await fake.plugin.check(urn, {}, news);
    expect(checked.failures).toEqual([]);
    expect(checked.inputs.device).toBe(UNKNOWN);
});

test("destroy refuses while a VM holds the group, and succeeds once it has stopped", async () => {
    const engine = new Engine(fake.plugin);
    await engine.up([gpu()]);
    let pid = 0;
    editMachine((k) => (pid = k.hold("/dev/vfio/7", "qemu-system-x86")));
    await expect(engine.destroy()).rejects.toThrow(/held open by PID \d+ \(qemu-system-x86\).*Stop the VM first/);
    expect(driverOf("0000:01:00.0")).toBe("vfio-pci");
    editMachine((k) => k.release(pid));
    await engine.destroy();
    expect(driverOf("0000:01:00.0")).toBe("bochs-drm");
});
