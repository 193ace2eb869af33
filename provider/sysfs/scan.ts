/**
 * Reading every PCI device of a host in two round trips (list, then all attributes), and resolving a selector by
 * vendor/device id to exactly one address.
 */
import { BatchQuery } from "../host/query";
import { Host, Op } from "../host/types";
import { IommuStatus, iommuStatusOps, parseIommuStatus } from "./iommu";
import { PCI_DEVICES, PciDevice, deviceReadOps, parseDevice } from "./pci";

export interface HostScan {
    iommu: IommuStatus;
    devices: PciDevice[];
    /** Registered PCI drivers. */
    drivers: string[];
    /** Results of the caller's extra ops, run in the first round trip. */
    extra: { ok: boolean; data: string }[];
}

export async function scanHost(host: Host, extra: Op[] = []): Promise<HostScan> {
    const q1 = new BatchQuery();
    const addresses = q1.one({ op: "list", path: PCI_DEVICES }, (r) => (r.ok ? r.data.split("\n").filter(Boolean).sort() : []));
    const iommu = q1.add(iommuStatusOps(), parseIommuStatus);
    const drivers = q1.one({ op: "list", path: "/sys/bus/pci/drivers" }, (r) => (r.ok ? r.data.split("\n").filter(Boolean) : []));
    const extraResults = q1.add(extra, (r) => r);
    const r1 = await q1.run(host);
    const q2 = new BatchQuery();
    const devices = q2.each(addresses(r1), deviceReadOps, parseDevice);
    const r2 = await q2.run(host);
    return { iommu: iommu(r1), devices: devices(r2).filter((d): d is PciDevice => d !== null), drivers: drivers(r1), extra: extraResults(r1) };
}

/** Choose one device by ids. Ids are hex, with or without `0x`, any case. */
export interface DeviceSelector {
    vendor: string;
    device: string;
    subsystemVendor?: string;
    subsystemDevice?: string;
    /** Which match, in address order (0-based), when several identical devices exist. */
    index?: number;
}

const norm = (id: string) => id.toLowerCase().replace(/^0x/, "");

export function describeSelector(s: DeviceSelector): string {
    const sub = s.subsystemVendor || s.subsystemDevice ? ` subsystem ${norm(s.subsystemVendor ?? "*")}:${norm(s.subsystemDevice ?? "*")}` : "";
    return `${norm(s.vendor)}:${norm(s.device)}${sub}${s.index !== undefined ? ` index ${s.index}` : ""}`;
}

/**
 * The one device a selector names.
 * @throws Error listing the candidates when it matches none or several (without an index), or the index is past the end.
 */
export function resolveSelector(devices: PciDevice[], s: DeviceSelector): PciDevice {
    const matches = devices
        .filter(
            (d) =>
                d.vendor === norm(s.vendor) &&
                d.device === norm(s.device) &&
                (s.subsystemVendor === undefined || d.subsystemVendor === norm(s.subsystemVendor)) &&
                (s.subsystemDevice === undefined || d.subsystemDevice === norm(s.subsystemDevice)),
        )
        .sort((a, b) => a.address.localeCompare(b.address));
    const list = (ds: PciDevice[]) => ds.map((d) => `${d.address} (${d.vendor}:${d.device} subsystem ${d.subsystemVendor}:${d.subsystemDevice}, ${d.driver ?? "no driver"})`).join("; ");
    if (matches.length === 0) {
        const sameVendor = devices.filter((d) => d.vendor === norm(s.vendor));
        throw new Error(`no device matches ${describeSelector(s)}${sameVendor.length ? `; devices of vendor ${norm(s.vendor)}: ${list(sameVendor)}` : ""}`);
    }
    if (s.index !== undefined) {
        if (s.index >= matches.length) throw new Error(`${describeSelector(s)}: index ${s.index} is past the ${matches.length} matching device(s): ${list(matches)}`);
        return matches[s.index];
    }
    if (matches.length > 1) {
        throw new Error(`${describeSelector(s)} matches ${matches.length} devices: ${list(matches)}; give the address, subsystem ids or an index`);
    }
    return matches[0];
}
