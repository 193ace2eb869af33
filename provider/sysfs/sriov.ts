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

/** Ops that read a PF's SR-IOV attributes (parse with {@link parseSriov}). */
export function sriovReadOps(pf: string): Op[] {
    return ATTRS.map((a): Op => ({ op: "read", path: `${PCI_DEVICES}/${pf}/${a}` }));
}
export const SRIOV_READ_OPS = ATTRS.length;

/** The PF's SR-IOV state, or null when it has no SR-IOV capability (no `sriov_totalvfs`). */
export function parseSriov(r: OpResult[]): SriovState | null {
    const get = (a: (typeof ATTRS)[number]) => {
        const x = r[ATTRS.indexOf(a)];
        return x?.ok ? x.data.trim() : undefined;
    };
    const total = get("sriov_totalvfs");
    if (total === undefined) return null;
    return {
        totalVfs: Number(total),
        numVfs: Number(get("sriov_numvfs") ?? 0),
        autoprobe: get("sriov_drivers_autoprobe") !== "0",
        offset: Number(get("sriov_offset") ?? 1),
        stride: Number(get("sriov_stride") ?? 1),
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

/** Ops that read VFs 0..count-1 through the PF's `virtfnN` links (parse with {@link parseVfs}). */
export function vfReadOps(pf: string, count: number): Op[] {
    const ops: Op[] = [];
    for (let i = 0; i < count; i++) {
        const v = `${PCI_DEVICES}/${pf}/virtfn${i}`;
        ops.push({ op: "readlink", path: v }, { op: "readlink", path: `${v}/driver` }, { op: "readlink", path: `${v}/iommu_group` });
    }
    return ops;
}
export const VF_READ_OPS = 3;

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

export function parseVfs(count: number, r: OpResult[]): VfView[] {
    const out: VfView[] = [];
    for (let i = 0; i < count; i++) {
        const [link, drv, grp] = r.slice(i * VF_READ_OPS, (i + 1) * VF_READ_OPS);
        if (!link?.ok || !link.data.trim()) continue;
        out.push({
            index: i,
            address: basename(link.data.trim()),
            driver: drv?.ok && drv.data.trim() ? basename(drv.data.trim()) : null,
            group: grp?.ok && grp.data.trim() ? Number(basename(grp.data.trim())) : null,
        });
    }
    return out;
}

/** `virtfnN` entries in a PF's directory listing: how many VFs exist now, whatever `sriov_numvfs` says. */
export function virtfnCount(listing: string[]): number {
    return listing.filter((n) => /^virtfn\d+$/.test(n)).length;
}
