/**
 * A fake machine shaped like the lab host (tests/lab): QEMU q35 with an emulated intel-iommu, a console GPU at
 * 00:01.0, a secondary GPU (01:00.0, bochs-drm) with its HD audio function (01:00.1, snd_hda_intel) in one IOMMU
 * group, the edu device, an SR-IOV capable NVMe and the ICH9 functions that share a group. Addresses, ids and
 * drivers are the ones the lab kernel shows, so one contract test can run on both. What the guest itself uses (its
 * root filesystem on the virtio disk 00:03.0, its SSH session on lab0 at 00:02.0) is in system.ts. (Group numbers differ: the
 * lab kernel numbers the GPU pair's group 8; nothing may depend on a group's number.)
 */
import { FakeKernel, FakeState } from "./kernel";
import { FakePciDevice, FakePciDriver, pci, pciSubsystem } from "./pci";
import { addKvmfr } from "./kvmfr";
import { addQemu } from "./qemu";
import { addMdev } from "./mdev";
import { labSystemState, systemSubsystem } from "./system";
import { bootSubsystem } from "./boot";
import { addConsole } from "./console";

/** Subsystems beyond PCI (mdev, kvmfr, QEMU, the system's mounts and network, the boot path) register here so every
 *  fake machine has them. */
export const extraSubsystems: ((k: FakeKernel) => void)[] = [];
extraSubsystems.push(addKvmfr, addQemu, addMdev, (k) => void k.use(systemSubsystem), (k) => void k.use(bootSubsystem, { first: true }), addConsole);

function dev(address: string, ids: string, cls: string, group: number, driver: string | null, extra: Partial<FakePciDevice> = {}): FakePciDevice {
    const [vendor, device] = ids.split(":");
    return {
        address,
        vendor: "0x" + vendor,
        device: "0x" + device,
        subsystemVendor: "0x1af4",
        subsystemDevice: "0x1100",
        class: cls,
        driver,
        override: null,
        group,
        resetMethods: [],
        numaNode: -1,
        ...extra,
    };
}

function drv(name: string, module: string, ids: string[], extra: Partial<FakePciDriver> = {}): FakePciDriver {
    return { name, module, ids, dynamicIds: [], ...extra };
}

/** The lab machine's initial state (a fresh boot). */
export function labPciState(): ReturnType<typeof pci> {
    const devices = [
        dev("0000:00:00.0", "8086:29c0", "0x060000", 0, null),
        dev("0000:00:01.0", "1234:1111", "0x030000", 1, "bochs-drm", { bootVga: true }),
        dev("0000:00:02.0", "1af4:1000", "0x020000", 2, "virtio-pci", { childDirs: ["virtio0"] }),
        // The lab numbers its group 3 (and the groups after it one higher than here); only the address counts.
        dev("0000:00:03.0", "1af4:1001", "0x010000", 20, "virtio-pci", { childDirs: ["virtio1"] }),
        // pcieport's services (AER, PME, DPC) are devices in the port's directory, named after it.
        ...[3, 4, 5].map((g, i) => dev(`0000:00:10.${i}`, "1b36:000c", "0x060400", g, "pcieport", { childDirs: ["pcie001", "pcie002", "pcie010"].map((s) => `0000:00:10.${i}:${s}`) })),
        dev("0000:00:1f.0", "8086:2918", "0x060100", 6, "lpc_ich"),
        dev("0000:00:1f.2", "8086:2922", "0x010601", 6, "ahci"),
        dev("0000:00:1f.3", "8086:2930", "0x0c0500", 6, "i801_smbus"),
        dev("0000:01:00.0", "1234:1111", "0x030000", 7, "bochs-drm", { bootVga: false, resetMethods: ["bus"], parent: "0000:00:10.0" }),
        dev("0000:01:00.1", "8086:2668", "0x040300", 7, "snd_hda_intel", { parent: "0000:00:10.0" }),
        dev("0000:02:00.0", "1234:11e8", "0x00ff00", 8, null, { resetMethods: ["bus"], parent: "0000:00:10.1" }),
        dev("0000:03:00.0", "1b36:0010", "0x010802", 9, "nvme", {
            parent: "0000:00:10.2",
            childDirs: ["nvme"],
            subsystemVendor: "0x1af4",
            resetMethods: ["flr", "bus"],
            sriov: { totalVfs: 4, numVfs: 0, autoprobe: true, vfDevice: "0x0010", offset: 1, stride: 1 },
        }),
    ];
    const drivers = [
        drv("bochs-drm", "bochs", ["1234:1111"]),
        drv("snd_hda_intel", "snd_hda_intel", ["8086:2668"]),
        drv("virtio-pci", "virtio_pci", ["1af4:1000", "1af4:1001"], { builtin: true }),
        drv("pcieport", "pcieport", [], { classes: ["0x0604"], builtin: true }),
        drv("lpc_ich", "lpc_ich", ["8086:2918"]),
        drv("ahci", "ahci", ["8086:2922"]),
        drv("i801_smbus", "i2c_i801", ["8086:2930"]),
        drv("nvme", "nvme", [], { classes: ["0x010802"], sriov: true, failsOnVf: true }),
        drv("vfio-pci", "vfio_pci", []),
        drv("pci-stub", "pci_stub", []),
    ];
    return {
        iommu: true,
        devices: Object.fromEntries(devices.map((d) => [d.address, d])),
        drivers: Object.fromEntries(drivers.map((d) => [d.name, d])),
        loaded: ["bochs", "snd_hda_intel", "lpc_ich", "ahci", "i2c_i801", "nvme"],
        kernelRelease: "6.1.0-fake-amd64",
        nextGroup: 10,
        vfioEnableSriov: false,
    };
}

/** A kernel with every fake subsystem attached, from saved state or as the lab host boots. */
export function fakeLabKernel(state?: FakeState): FakeKernel {
    const k = new FakeKernel(state);
    k.use(pciSubsystem);
    for (const add of extraSubsystems) add(k);
    if (!state) {
        k.state.ext.pci = labPciState();
        k.state.ext.system = labSystemState();
        k.state.dirs.push("/etc", "/etc/modprobe.d", "/etc/modules-load.d", "/etc/udev/rules.d", "/run", "/run/lock", "/var/lib", "/usr/sbin");
        k.state.files["/usr/sbin/driverctl"] = { data: "#!/bin/bash\n", mode: 0o755 };
    }
    return k;
}

/** Same machine with the IOMMU off (no intel_iommu=on): no groups, no /sys/class/iommu entries. */
export function fakeKernelWithoutIommu(): FakeKernel {
    const k = fakeLabKernel();
    pci(k).iommu = false;
    return k;
}
