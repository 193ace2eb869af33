/**
 * SR-IOV through sysfs (Documentation/ABI/testing/sysfs-bus-pci, Documentation/PCI/pci-iov-howto.rst), with the
 * errors observed on the lab kernel (6.1, QEMU's emulated NVMe):
 * - `sriov_numvfs` above `sriov_totalvfs` → ERANGE; a non-zero count to another non-zero count → EBUSY (the count
 *   goes through 0); the same count again → no-op; a PF without a driver that supports SR-IOV → ENOENT (a PF on
 *   vfio-pci needs `enable_sriov=1`);
 * - `sriov_drivers_autoprobe` = 0 before enabling keeps host drivers off the new VFs (free for vfio-pci); with it on,
 *   the nvme driver probes the VFs and fails;
 * - VF `N` is the link `virtfnN`, at routing id PF + `sriov_offset` + N × `sriov_stride`; each VF gets its own group.
 * - Removing VFs while a VM holds one of them blocks in the kernel, like an unbind.
 */
import { BatchQuery, Part } from "../host/query";
import { Op, OpResult } from "../host/types";
import { PCI_DEVICES } from "./pci";

const ATTRS = ["sriov_totalvfs", "sriov_numvfs", "sriov_drivers_autoprobe", "sriov_offset", "sriov_stride"] as const;

export interface SriovState {
    totalVfs: number;
    numVfs: number;
    autoprobe: boolean;
    offset: number;
    stride: number;
}

/**
 * The PF's SR-IOV state as a part of `q`: null when it has no SR-IOV capability (no `sriov_totalvfs`). Missing
 * `sriov_offset`/`sriov_stride` default to 1, a missing autoprobe to on (the kernel's default).
 */
export function sriovQuery(q: BatchQuery, pf: string): Part<SriovState | null> {
    const attr = (a: (typeof ATTRS)[number]) => q.one({ op: "read", path: `${PCI_DEVICES}/${pf}/${a}` }, (r) => (r.ok ? r.data.trim() : undefined));
    const [total, num, autoprobe, offset, stride] = ATTRS.map(attr);
    return (r) => {
        const t = total(r);
        if (t === undefined) return null;
        return { totalVfs: Number(t), numVfs: Number(num(r) ?? 0), autoprobe: autoprobe(r) !== "0", offset: Number(offset(r) ?? 1), stride: Number(stride(r) ?? 1) };
    };
}

/**
 * The address VF `index` will have: routing id (bus << 8 | devfn) of the PF + offset + index × stride. Used to
 * show in the preview which devices will appear; the `virtfnN` links read afterwards are the truth.
 */
export function vfAddress(pf: string, offset: number, stride: number, index: number): string {
    const m = /^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/.exec(pf);
    if (!m) throw new Error(`${pf} is not a normalized PCI address`);
    const rid = ((parseInt(m[2], 16) << 8) | (parseInt(m[3], 16) << 3) | parseInt(m[4], 10)) + offset + index * stride;
    const hex2 = (n: number) => n.toString(16).padStart(2, "0");
    return `${m[1]}:${hex2((rid >> 8) & 0xff)}:${hex2((rid & 0xff) >> 3)}.${rid & 7}`;
}

/**
 * The writes that take a PF from `from` to `to` VFs: autoprobe first (it applies to VFs created afterwards), then
 * through 0 when both counts are non-zero, because the kernel refuses a direct change with EBUSY.
 */
export function numVfsOps(pf: string, from: SriovState, to: { count: number; autoprobe: boolean }): Op[] {
    const base = `${PCI_DEVICES}/${pf}`;
    const ops: Op[] = [];
    if (from.autoprobe !== to.autoprobe) ops.push({ op: "write", path: `${base}/sriov_drivers_autoprobe`, data: to.autoprobe ? "1" : "0" });
    if (from.numVfs !== to.count) {
        if (from.numVfs !== 0) ops.push({ op: "write", path: `${base}/sriov_numvfs`, data: "0" });
        if (to.count !== 0) ops.push({ op: "write", path: `${base}/sriov_numvfs`, data: String(to.count) });
    }
    return ops;
}

export interface VfView {
    index: number;
    address: string;
    /** Bound driver, null when none. */
    driver: string | null;
    group: number | null;
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const linkLeaf = (r: OpResult | undefined): string | null => (r?.ok && r.data.trim() ? basename(r.data.trim()) : null);

/** VFs 0..count-1 through the PF's `virtfnN` links (link, driver, group each), as a part of `q`; absent ones left out. */
export function vfsQuery(q: BatchQuery, pf: string, count: number): Part<VfView[]> {
    const indexes = Array.from({ length: count }, (_, i) => i);
    const each = q.each(
        indexes,
        (i): Op[] => {
            const v = `${PCI_DEVICES}/${pf}/virtfn${i}`;
            return [
                { op: "readlink", path: v },
                { op: "readlink", path: `${v}/driver` },
                { op: "readlink", path: `${v}/iommu_group` },
            ];
        },
        (index, [link, drv, grp]): VfView | null => {
            const address = linkLeaf(link);
            if (address === null) return null;
            const group = linkLeaf(grp);
            return { index, address, driver: linkLeaf(drv), group: group === null ? null : Number(group) };
        },
    );
    return (r) => each(r).filter((v): v is VfView => v !== null);
}

/** `virtfnN` entries in a PF's directory listing: how many VFs exist now, whatever `sriov_numvfs` says. */
export function virtfnCount(listing: string[]): number {
    return listing.filter((n) => /^virtfn\d+$/.test(n)).length;
}
