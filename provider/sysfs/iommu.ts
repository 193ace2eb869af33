/**
 * IOMMU groups and VFIO viability (Documentation/driver-api/vfio.rst). A group is usable by a VM only when every
 * member is bound to a vfio driver, pci-stub, pcieport (bridges) or to no driver at all; otherwise QEMU fails with
 * "group N is not viable". The kernel does not refuse a non-viable bind (LAB.md), so the check is ours.
 */
import { Host, Op } from "../host/types";
import { DEVICE_READ_OPS, PCI_DEVICES, PciDevice, deviceReadOps, parseDevice } from "./pci";

export const IOMMU_GROUPS = "/sys/kernel/iommu_groups";

/** Drivers under which a group member does not spoil viability. */
const VIABLE_DRIVERS = new Set(["pci-stub", "pcieport"]);

/** vfio-pci and its variant drivers (e.g. `mlx5_vfio_pci`, `nvgrace_gpu_vfio_pci`). */
export function isVfioDriver(name: string | null): boolean {
    return !!name && (name === "vfio-pci" || /vfio[_-]pci$/.test(name));
}

/** Is this member harmless for the group's viability? */
export function memberViable(d: Pick<PciDevice, "driver">): boolean {
    return d.driver === null || isVfioDriver(d.driver) || VIABLE_DRIVERS.has(d.driver);
}

/** One line per member that would make QEMU refuse the group, empty when viable. */
export function viabilityProblems(members: Pick<PciDevice, "address" | "driver">[]): string[] {
    return members.filter((m) => !memberViable(m)).map((m) => `${m.address} is bound to ${m.driver}`);
}

export interface IommuStatus {
    /** True when the kernel has an IOMMU enabled (entries under /sys/class/iommu and groups exist). */
    enabled: boolean;
    groups: number[];
}

export function iommuStatusOps(): Op[] {
    return [
        { op: "list", path: "/sys/class/iommu" },
        { op: "list", path: IOMMU_GROUPS },
    ];
}

export function parseIommuStatus(r: { ok: boolean; data: string }[]): IommuStatus {
    const units = r[0]?.ok ? r[0].data.split("\n").filter(Boolean) : [];
    const groups = r[1]?.ok ? r[1].data.split("\n").filter(Boolean).map(Number).sort((a, b) => a - b) : [];
    return { enabled: units.length > 0 && groups.length > 0, groups };
}

/** What to tell a user whose IOMMU is off. */
export const IOMMU_OFF_FIX =
    "the IOMMU is off on this host (/sys/kernel/iommu_groups is empty): enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, " +
    "add `intel_iommu=on iommu=pt` (Intel) or `amd_iommu=on iommu=pt` (AMD) to the kernel command line (GRUB: GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, then update-grub; systemd-boot: /etc/kernel/cmdline, then kernel-install or bootctl update), and reboot";

export interface GroupView {
    /** The device asked about, or null when it does not exist. */
    device: PciDevice | null;
    /** Its group number (null: IOMMU off or device absent). */
    group: number | null;
    /** Every member of the group, the device included, in address order. */
    members: PciDevice[];
    iommu: IommuStatus;
    /** Names of the PCI drivers registered now (`/sys/bus/pci/drivers`). */
    drivers: string[];
    /** PIDs that hold `/dev/vfio/<group>` open. */
    openers: number[];
}

/**
 * Read a device, its whole IOMMU group, the IOMMU status and the registered drivers in two round trips: the
 * first learns the group's member list along with the device itself, the second reads the other members.
 */
export async function readGroup(host: Host, address: string, extra: Op[] = []): Promise<GroupView & { extra: { ok: boolean; data: string }[] }> {
    const first: Op[] = [
        ...deviceReadOps(address),
        { op: "list", path: `${PCI_DEVICES}/${address}/iommu_group/devices` },
        ...iommuStatusOps(),
        { op: "list", path: "/sys/bus/pci/drivers" },
        ...extra,
    ];
    const r1 = await host.run(first);
    const device = parseDevice(address, r1.slice(0, DEVICE_READ_OPS));
    const membersListed = r1[DEVICE_READ_OPS].ok ? r1[DEVICE_READ_OPS].data.split("\n").filter(Boolean) : [];
    const iommu = parseIommuStatus(r1.slice(DEVICE_READ_OPS + 1, DEVICE_READ_OPS + 3));
    const drivers = r1[DEVICE_READ_OPS + 3].ok ? r1[DEVICE_READ_OPS + 3].data.split("\n").filter(Boolean) : [];
    const extraResults = r1.slice(DEVICE_READ_OPS + 4);
    const group = device?.group ?? null;
    const others = membersListed.filter((a) => a !== address).sort();
    const second: Op[] = others.flatMap(deviceReadOps);
    if (group !== null) second.push({ op: "openers", path: `/dev/vfio/${group}` });
    const r2 = second.length ? await host.run(second) : [];
    const members = device ? [device] : [];
    others.forEach((a, i) => {
        const d = parseDevice(a, r2.slice(i * DEVICE_READ_OPS, (i + 1) * DEVICE_READ_OPS));
        if (d) members.push(d);
    });
    members.sort((a, b) => a.address.localeCompare(b.address));
    const openersResult = group !== null ? r2[r2.length - 1] : undefined;
    const openers = openersResult?.ok ? openersResult.data.split("\n").filter(Boolean).map(Number) : [];
    return { device, group, members, iommu, drivers, openers, extra: extraResults };
}
