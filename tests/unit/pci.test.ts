import { bindOps, isBridge, parseAddress, restoreOps } from "../../provider/sysfs/pci";
import { memberViable, viabilityProblems } from "../../provider/sysfs/iommu";
import { resolveSelector } from "../../provider/sysfs/scan";
import { PciDevice } from "../../provider/sysfs/pci";

describe("PCI addresses: the gate before anything becomes a path", () => {
    test.each([
        ["0000:01:00.0", "0000:01:00.0"],
        ["01:00.0", "0000:01:00.0"],
        ["0000:0A:1F.7", "0000:0a:1f.7"],
        ["10de:65:00.1", "10de:65:00.1"],
    ])("%s is accepted as %s", (input, out) => expect(parseAddress(input)).toBe(out));

    test.each([["../../etc/passwd"], ["0000:01:00.0/../../x"], ["0000:01:20.0"], ["0000:01:00.8"], [" 01:00.0"], ["01:00.0\n"], ["01:00"], [""], ["0000:01:00.0 0000:02:00.0"], ["zz:00.0"]])(
        "%j is refused with the expected form in the message",
        (input) => expect(() => parseAddress(input)).toThrow(/is not a PCI address: write it as DDDD:BB:DD.F/),
    );
});

describe("driverctl's sequence, as batch ops", () => {
    test("a device on a host driver: unbind, override, probe (probe may fail, lxd#12128)", () => {
        expect(bindOps("0000:01:00.1", { driver: "snd_hda_intel", override: null }, "vfio-pci")).toEqual([
            { op: "write", path: "/sys/bus/pci/drivers/snd_hda_intel/unbind", data: "0000:01:00.1" },
            { op: "write", path: "/sys/bus/pci/devices/0000:01:00.1/driver_override", data: "vfio-pci" },
            { op: "write", path: "/sys/bus/pci/drivers_probe", data: "0000:01:00.1", optional: true },
        ]);
    });
    test("an unbound device is not unbound again", () => {
        expect(bindOps("0000:02:00.0", { driver: null, override: null }, "vfio-pci").map((o) => ("path" in o ? o.path : ""))).toEqual([
            "/sys/bus/pci/devices/0000:02:00.0/driver_override",
            "/sys/bus/pci/drivers_probe",
        ]);
    });
    test("a device already on the driver only gets its override pinned", () => {
        expect(bindOps("0000:02:00.0", { driver: "vfio-pci", override: null }, "vfio-pci")).toHaveLength(1);
        expect(bindOps("0000:02:00.0", { driver: "vfio-pci", override: "vfio-pci" }, "vfio-pci")).toHaveLength(0);
    });
    test("restore clears the override with a newline (echo > driver_override) and binds the previous driver explicitly", () => {
        expect(restoreOps("0000:01:00.0", { driver: "vfio-pci", override: "vfio-pci" }, { driver: "bochs-drm", override: null })).toEqual([
            { op: "write", path: "/sys/bus/pci/drivers/vfio-pci/unbind", data: "0000:01:00.0", optional: true },
            { op: "write", path: "/sys/bus/pci/devices/0000:01:00.0/driver_override", data: "\n", optional: true },
            { op: "write", path: "/sys/bus/pci/drivers/bochs-drm/bind", data: "0000:01:00.0", optional: true },
        ]);
    });
});

describe("VFIO group viability (vfio.rst): every member on vfio, pci-stub, pcieport or no driver", () => {
    test.each([
        [null, true],
        ["vfio-pci", true],
        ["mlx5_vfio_pci", true],
        ["pci-stub", true],
        ["pcieport", true],
        ["snd_hda_intel", false],
        ["nvidia", false],
        ["amdgpu", false],
    ])("a member on %s is viable: %s", (driver, ok) => expect(memberViable({ driver })).toBe(ok));

    test("the classic failure names the HDMI audio function left on its host driver", () => {
        expect(viabilityProblems([{ address: "0000:01:00.0", driver: "vfio-pci" }, { address: "0000:01:00.1", driver: "snd_hda_intel" }])).toEqual(["0000:01:00.1 is bound to snd_hda_intel"]);
    });
    test.each([
        ["060400", "PCI-to-PCI bridge (a root port, on pcieport)", true],
        ["060401", "subtractive-decode PCI-to-PCI bridge", true],
        ["060900", "semi-transparent PCI-to-PCI bridge", true],
        ["060000", "host bridge (no driver, left as is)", true],
        ["060100", "ISA/LPC bridge: a chipset function on lpc_ich, host-critical, not a bridge left alone", false],
        ["030000", "VGA controller", false],
    ])("class %s (%s) is a bridge a binding leaves alone: %s", (cls, _what, expected) => {
        expect(isBridge({ class: cls })).toBe(expected);
    });
});

describe("selecting a device by ids", () => {
    const d = (address: string, vendor: string, device: string, subsystemVendor = "1458"): PciDevice => ({
        address, vendor, device, subsystemVendor, subsystemDevice: "4000", class: "030000", driver: "nvidia", override: null, group: 1, bootVga: false, resetMethods: [], numaNode: -1,
    });
    const devices = [d("0000:01:00.0", "10de", "2204"), d("0000:02:00.0", "10de", "2204", "1043"), d("0000:03:00.0", "1002", "73bf")];
    test("ids match in any case and with 0x", () => expect(resolveSelector(devices, { vendor: "0x1002", device: "73BF" }).address).toBe("0000:03:00.0"));
    test("two identical GPUs: the error lists both and how to choose", () =>
        expect(() => resolveSelector(devices, { vendor: "10de", device: "2204" })).toThrow(/matches 2 devices: 0000:01:00.0 .*0000:02:00.0 .*give the address, subsystem ids or an index/));
    test("subsystem ids or an index choose one", () => {
        expect(resolveSelector(devices, { vendor: "10de", device: "2204", subsystemVendor: "1043" }).address).toBe("0000:02:00.0");
        expect(resolveSelector(devices, { vendor: "10de", device: "2204", index: 1 }).address).toBe("0000:02:00.0");
    });
    test("no match lists the vendor's devices", () => expect(() => resolveSelector(devices, { vendor: "10de", device: "1b80" })).toThrow(/no device matches 10de:1b80; devices of vendor 10de: 0000:01:00.0/));
    test("an index past the end says how many match", () => expect(() => resolveSelector(devices, { vendor: "10de", device: "2204", index: 2 })).toThrow(/index 2 is past the 2 matching/));
});
