/** What BootConfig reads of a host, in one round trip (two with modalias lookups, three with a vfio-pci.ids scan). */
import { BOOTCTL, GRUBBY, GRUB_CFG, GRUB_DROPIN, KERNEL_CMDLINE, LoaderEntry, LoaderFacts } from "./loaders";
import { runningParameters, vfioPciIds } from "./cmdline";
import { moduleKey } from "./modprobe";
import { BOOT_ID, OWNED, PROBED, Settings } from "./types";
import { BatchQuery, textOf } from "../host/query";
import { Host, Op, OpResult } from "../host/types";
import { PCI_DEVICES, driverFromLink } from "../sysfs/pci";


interface DeviceFacts {
    address: string;
    exists: boolean;
    driver: string | null;
    /** The loadable module behind the current driver (null: built into the kernel, or no driver). */
    driverModule: string | null;
    /** Modules whose aliases match the device (`modprobe -R <modalias>`). */
    aliasModules: string[];
    id: string;
}

export interface BootFacts extends LoaderFacts {
    owned: Record<string, string | undefined>;
    devices: DeviceFacts[];
    cpuVendor?: string;
    bootId: string;
    /** Module parameters now (`/sys/module/<m>/parameters/<p>`), undefined when not loaded or not readable. */
    moduleParams: Record<string, string | undefined>;
    /** vendor:device → addresses and drivers of every PCI device, when `vfio-pci.ids=` is asked for. */
    pciIds?: { address: string; id: string; driver: string | null }[];
}

const present = (r: OpResult) => r.ok;

/** What the first batch tells, devices with their `modalias` (for the `modprobe -R` of the second). */
type FirstFacts = Omit<BootFacts, "devices"> & { devices: (DeviceFacts & { modalias?: string })[] };

/**
 * Everything check, create, read and delete need: one round trip, a second when early-bound devices have a modalias
 * to resolve (`modprobe -R`), a scan when `vfio-pci.ids=` is asked for.
 */
export async function readBootFacts(host: Host, s: Settings): Promise<BootFacts> {
    const q = new BatchQuery();
    const first = bootFactsQuery(q, s);
    const r = await q.run(host);
    const facts = first(r);
    // Which modules would drive each device: one exec each, only for devices that have a modalias.
    const aliased = facts.devices.filter((d) => d.modalias);
    if (aliased.length) {
        const r2 = await host.run(aliased.map((d): Op => ({ op: "exec", argv: ["modprobe", "-R", d.modalias!], optional: true })));
        aliased.forEach((d, i) => (d.aliasModules = r2[i].ok ? r2[i].data.split("\n").map((x) => x.trim()).filter(Boolean) : []));
    }
    if (vfioPciIds(s.kernelParameters).length) {
        const { scanHost } = await import("../sysfs/scan");
        const scan = await scanHost(host);
        facts.pciIds = scan.devices.map((d) => ({ address: d.address, id: `${d.vendor}:${d.device}`, driver: d.driver }));
    }
    return { ...facts, devices: facts.devices.map(({ modalias: _m, ...d }) => d) };
}

/** The first batch of {@link readBootFacts}, added to `q` (so another reader can send it in its own round trip). */
export function bootFactsQuery(q: BatchQuery, s: Settings): (r: OpResult[]) => FirstFacts {
    const probed = q.add(PROBED.map((path): Op => ({ op: "stat", path })), (rs) => new Set(PROBED.filter((_, i) => present(rs[i]))));
    const sdBoot = q.one({ op: "exec", argv: [BOOTCTL, "is-installed", "--quiet"], optional: true }, (r) => r.ok);
    const entries = q.one({ op: "exec", argv: [BOOTCTL, "list", "--json=short", "--no-pager"], optional: true }, (r) => parseEntries(r));
    const grubby = q.one({ op: "exec", argv: [GRUBBY, "--info=DEFAULT"], optional: true }, (r) => (r.ok ? r.data : undefined));
    const grubCfg = q.one({ op: "read", path: GRUB_CFG }, textOf);
    const kernelCmdline = q.one({ op: "read", path: KERNEL_CMDLINE }, textOf);
    const proc = q.one({ op: "read", path: "/proc/cmdline" }, (r) => textOf(r) ?? "");
    const release = q.one({ op: "read", path: "/proc/sys/kernel/osrelease" }, (r) => (textOf(r) ?? "").trim());
    const bootId = q.one({ op: "read", path: BOOT_ID }, (r) => (textOf(r) ?? "").trim());
    const cpu = q.one({ op: "read", path: "/proc/cpuinfo" }, (r) => /^vendor_id\s*:\s*(\S+)/m.exec(textOf(r) ?? "")?.[1]);
    const owned = q.add(OWNED.map((path): Op => ({ op: "read", path })), (rs) => Object.fromEntries(OWNED.map((p, i) => [p, textOf(rs[i])])));
    const devices = s.earlyBinding.map((address) =>
        q.add(
            [
                { op: "readlink", path: `${PCI_DEVICES}/${address}/driver` },
                { op: "readlink", path: `${PCI_DEVICES}/${address}/driver/module` },
                // A loadable module has an initstate; a driver built into the kernel has none (or no module at all).
                { op: "read", path: `${PCI_DEVICES}/${address}/driver/module/initstate` },
                { op: "read", path: `${PCI_DEVICES}/${address}/vendor` },
                { op: "read", path: `${PCI_DEVICES}/${address}/device` },
                { op: "read", path: `${PCI_DEVICES}/${address}/modalias` },
            ],
            ([drv, mod, initstate, vendor, device, modalias]): DeviceFacts & { modalias?: string } => ({
                address,
                exists: vendor.ok,
                driver: driverFromLink(drv),
                driverModule: mod.ok && initstate.ok ? mod.data.trim().slice(mod.data.trim().lastIndexOf("/") + 1) : null,
                aliasModules: [],
                id: `${vendor.data.trim().replace(/^0x/, "")}:${device.data.trim().replace(/^0x/, "")}`,
                modalias: modalias.ok ? modalias.data.trim() : undefined,
            }),
        ),
    );
    const paramPaths = s.modules.flatMap((m) => Object.keys(m.options ?? {}).map((p) => `/sys/module/${moduleKey(m.name)}/parameters/${p}`));
    const params = q.add(paramPaths.map((path): Op => ({ op: "read", path })), (rs) => Object.fromEntries(paramPaths.map((p, i) => [p, textOf(rs[i])?.trim()])));
    return (r) => ({
        present: probed(r),
        systemdBootInstalled: sdBoot(r),
        entries: entries(r),
        grubbyInfo: grubby(r),
        grubCfg: grubCfg(r),
        grubDropin: owned(r)[GRUB_DROPIN],
        kernelCmdline: kernelCmdline(r),
        running: runningParameters(proc(r)),
        kernelRelease: release(r),
        bootId: bootId(r),
        cpuVendor: cpu(r),
        owned: owned(r),
        devices: devices.map((d) => d(r)),
        moduleParams: params(r),
    });
}

/**
 * `bootctl list --json=short`: systemd 252 (Debian 12) prints one JSON object a line, newer ones one array; both
 * are taken.
 */
export function parseEntries(r: OpResult): LoaderEntry[] | undefined {
    if (!r.ok) return undefined;
    const out: LoaderEntry[] = [];
    for (const line of r.data.split("\n").map((l) => l.trim()).filter(Boolean)) {
        try {
            const v = JSON.parse(line);
            out.push(...(Array.isArray(v) ? v : [v]));
        } catch {
            return undefined;
        }
    }
    return out;
}
