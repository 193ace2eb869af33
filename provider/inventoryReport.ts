/**
 * `pulumi-vfio inventory`'s text report: a warning with the fix first when the IOMMU is off, the boot configuration,
 * then one table of devices grouped by IOMMU group with what each group means for a binding.
 */
import type { HostInventory, InventoryDevice, MdevType } from "./inventory";
import { IOMMU_OFF_FIX } from "./sysfs/iommu";
import { formatBootSummary } from "./boot/summary";

/** `mtty-1(24) mtty-2(12)`: type ids with their available instances. */
export function formatMdevTypes(types: MdevType[]): string {
    return types.map((t) => `${t.id}(${t.availableInstances ?? "?"})`).join(" ");
}

/** The flags column of a device: `boot-vga; override:vfio-pci; reset:flr,bus; sriov 0/4; vf of ...; mdev: ...`. */
export function deviceFlags(d: InventoryDevice): string[] {
    const f: string[] = [];
    if (d.bootVga) f.push("boot-vga");
    if (d.driverOverride) f.push(`override:${d.driverOverride}`);
    if (d.resetMethods.length) f.push(`reset:${d.resetMethods.join(",")}`);
    else f.push("no-reset");
    if (d.reset.verdict !== "ok" && d.resetMethods.length) f.push("reset-unusable");
    if (d.sriov) f.push(`sriov ${d.sriov.numVfs}/${d.sriov.totalVfs}`);
    if (d.physfn) f.push(`vf of ${d.physfn}`);
    if (d.mdevTypes.length) f.push(`mdev: ${formatMdevTypes(d.mdevTypes)}`);
    return f;
}

/** `0000:03:00.0 (AMD Navi 10 1002:731f): no working reset without vendor-reset (not loaded) — ...`. */
export function resetLine(d: InventoryDevice): string {
    const name = d.deviceName ?? (d.reset.vendorReset ? `AMD ${d.reset.vendorReset}` : undefined);
    return `${d.address} (${name ? `${name} ` : ""}${d.vendor}:${d.device}): ${d.reset.text}`;
}

function deviceNames(d: InventoryDevice): string {
    const parts = [d.vendorName, d.deviceName].filter((x): x is string => !!x);
    if (d.subsystemName) parts.push(`(${d.subsystemName})`);
    return parts.join(" ");
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/** A reason up to its explanation: `is the SMBus controller (class 0c05)`. */
const shortReason = (r: string) => r.split(": ")[0];

/** A readable report: a warning with the fix first when the IOMMU is off, then one table grouped by IOMMU group. */
export function formatInventory(inv: HostInventory): string {
    const out: string[] = [];
    if (!inv.iommu.enabled) out.push(`WARNING: ${capitalize(inv.iommu.fix ?? IOMMU_OFF_FIX)}.`);
    if (!inv.iommu.enabled && inv.kernelCmdline && /\b(intel_iommu|amd_iommu)=on\b/.test(inv.kernelCmdline)) {
        out.push("  The kernel command line already asks for the IOMMU: check that VT-d/AMD-Vi is enabled in the firmware setup.");
    }
    const iommuState = inv.iommu.enabled ? `IOMMU on (${inv.groups.length} groups)` : "IOMMU OFF";
    out.push(`host ${inv.host}, kernel ${inv.kernelRelease ?? "unknown"}, ${iommuState}, ${inv.devices.length} PCI devices`);
    out.push(`modules: ${inv.modules.length ? inv.modules.join(" ") : "no vfio/mdev/kvmfr module loaded"}`);
    out.push(`kvmfr: ${inv.kvmfr.length ? inv.kvmfr.map((k) => (k.isCharDevice ? k.path : `${k.path} (NOT a character device: reload kvmfr before starting QEMU)`)).join(" ") : "none"}`);
    if (!inv.pciIds) out.push("names: none (no readable pci.ids on the host; the pciutils or hwdata package provides it)");
    out.push(...formatBootSummary(inv.boot));
    out.push("");

    type Row = string[];
    const sections: { title: string; rows: Row[] }[] = [];
    const row = (d: InventoryDevice): Row => [d.address, `${d.className} [${d.class.slice(0, 4)}]`, `${d.vendor}:${d.device}`, d.driver ?? "-", [...(criticalAt.has(d.address) ? ["host-critical"] : []), ...deviceFlags(d)].join("; "), deviceNames(d)];
    const byAddress = new Map(inv.devices.map((d) => [d.address, d]));
    const grouped = new Set<string>();
    const criticalAt = new Map(inv.groups.flatMap((g) => (g.hostCritical ?? []).map((c) => [c.address, c.reason] as const)));
    for (const g of inv.groups) {
        const state =
            g.verdict === "host-critical"
                ? `host-critical, do not bind: ${g.hostCritical.map((c) => `${c.address} ${shortReason(c.reason)}`).join("; ")}`
                : g.verdict === "bridges"
                  ? "bridges only, nothing to pass through"
                  : g.viable
                    ? "viable"
                    : `not viable until bound, bind it (${g.problems.join("; ")})${g.members.some((m) => byAddress.get(m)?.bootVga) ? "; it holds the host's console GPU: binding it needs allowBootVga" : ""}`;
        const title = `IOMMU group ${g.number}: ${state}${g.vfioDevice ? `, ${g.vfioDevice}` : ""}`;
        const rows = g.members.map((m) => {
            grouped.add(m);
            const d = byAddress.get(m);
            return d ? row(d) : [m, "(not a PCI device)", "-", "-", "", ""];
        });
        sections.push({ title, rows });
    }
    const rest = inv.devices.filter((d) => !grouped.has(d.address));
    if (rest.length) sections.push({ title: inv.iommu.enabled ? "no IOMMU group" : "no IOMMU groups (IOMMU off)", rows: rest.map(row) });

    const header: Row = ["ADDRESS", "CLASS", "IDS", "DRIVER", "FLAGS", "NAME"];
    const all = [header, ...sections.flatMap((s) => s.rows)];
    const widths = header.map((_, i) => Math.max(...all.map((r) => r[i].length)));
    const fmt = (r: Row) => "  " + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd();
    out.push(fmt(header));
    for (const s of sections) {
        out.push(s.title);
        for (const r of s.rows) out.push(fmt(r));
    }
    if (criticalAt.size) {
        out.push("host-critical devices (IommuBinding refuses their groups unless allowHostCritical lists them)");
        for (const [a, why] of criticalAt) out.push(`  ${a} ${why}`);
    }
    // A GPU that cannot be reset is what makes a VM restart need a host reboot: say so, with the fix where there is one.
    const noReset = inv.devices.filter((d) => d.reset.verdict === "vendor-reset" || (d.reset.verdict === "none" && d.class.startsWith("03")));
    if (noReset.length) {
        out.push("resets (what the kernel can do when a VM lets go of the device)");
        for (const d of noReset) out.push(`  ${resetLine(d)}`);
    }
    const others = inv.mdev.filter((p) => !p.pci);
    if (others.length) {
        out.push("mdev parents outside PCI");
        for (const p of others) out.push(`  ${p.parent}  mdev: ${formatMdevTypes(p.types) || "(no types)"}`);
    }
    return out.join("\n") + "\n";
}
