/**
 * What an IommuBinding does about resets, planned from what was read (pure; binding/plan.ts calls it): the preview line
 * per managed function (which reset the kernel will use, see reset/capability.ts), whether destroy resets it between
 * unbinding it from vfio-pci and rebinding its host driver (`resetOnRelease`), and the `reset_method` the user asked
 * for (`resetMethod`) with the udev rule that keeps it across reboots, as vendor-reset's own rule does
 * (gnif/vendor-reset udev/99-vendor-reset.rules: `ACTION=="add", SUBSYSTEM=="pci", ..., ATTR{reset_method}="device_specific"`).
 */
import type { Op } from "../host/types";
import { PCI_DEVICES, PciDevice, classLabel } from "../sysfs/pci";
import { ResetCapability, busSiblings, resetCapability } from "./capability";

export const UDEV_RULES_DIR = "/etc/udev/rules.d";
/** A reset may take seconds (vendor-reset's BACO reset of a Navi GPU); a hung one must not hang destroy. */
export const RESET_TIMEOUT_MS = 30_000;

/** The udev rule that sets `address`'s `reset_method` at every boot (`70-`: before vendor-reset's `99-` rule). */
export function resetRuleFile(address: string): string {
    return `${UDEV_RULES_DIR}/70-pulumi-vfio-reset-${address}.rules`;
}

export function resetRuleText(address: string, methods: string): string {
    return `# Written by pulumi-vfio (IommuBinding resetMethod); removed by its destroy.\nACTION=="add", SUBSYSTEM=="pci", KERNEL=="${address}", ATTR{reset_method}="${methods}"\n`;
}

/** What the host says about resets beyond each device's `reset_method` (read with the group, see sysfs/iommu.ts). */
export interface ResetContext {
    /** Every PCI address on the host (`/sys/bus/pci/devices`), for the functions sharing a bus. */
    pciAddresses: string[];
    /** `/sys/module/vendor_reset` exists. */
    vendorResetLoaded: boolean;
}

/** The reset decisions of one managed function. */
export interface MemberReset {
    capability: ResetCapability;
    /** The method destroy resets it with (the capability's), when resetOnRelease holds for it. */
    onRelease?: string;
}

/** `reset_method` as the device will have it once `resetMethod` is written (`default`: the kernel's list, as now). */
export function effectiveMethods(d: PciDevice, resetMethod: string | undefined): string[] {
    return resetMethod === undefined || resetMethod === "default" ? d.resetMethods : resetMethod.split(" ");
}

/**
 * Decide each managed function's reset on release. `resetOnRelease` unset: reset where the capability is `ok`;
 * false: never; true: the same as unset, and the named device must have a usable reset (else a problem).
 */
export function planResets(
    managed: PciDevice[],
    named: string,
    inputs: { resetMethod?: string; resetOnRelease?: boolean },
    ctx: ResetContext | undefined,
): { resets: Map<string, MemberReset>; problems: { property: string; reason: string }[] } {
    const resets = new Map<string, MemberReset>();
    const problems: { property: string; reason: string }[] = [];
    for (const d of managed) {
        const methods = effectiveMethods(d, d.address === named ? inputs.resetMethod : undefined);
        const capability = resetCapability({
            vendor: d.vendor,
            device: d.device,
            resetMethods: methods,
            busSiblings: busSiblings(d.address, ctx?.pciAddresses ?? [d.address]),
            vendorResetLoaded: !!ctx?.vendorResetLoaded,
        });
        const r: MemberReset = { capability };
        if (inputs.resetOnRelease !== false && capability.verdict === "ok") r.onRelease = capability.method;
        resets.set(d.address, r);
        if (inputs.resetOnRelease === true && d.address === named && capability.verdict !== "ok") {
            problems.push({
                property: "resetOnRelease",
                reason: `resetOnRelease: true, but ${deviceLabel(d, capability)} has no usable reset: ${capability.text}. Remove resetOnRelease (destroy then releases without a reset)${capability.vendorReset ? ", or load vendor-reset and set resetMethod: device_specific" : ""}`,
            });
        }
    }
    return { resets, problems };
}

/** `0000:03:00.0 (AMD Navi 10 1002:731f)`; a device outside vendor-reset's table by its class. */
export function deviceLabel(d: PciDevice, c: ResetCapability): string {
    return `${d.address} (${c.vendorReset ? `AMD ${c.vendorReset}` : classLabel(d.class)} ${d.vendor}:${d.device})`;
}

/** The preview line of one managed function's reset: what the kernel can do, and what destroy will do. */
export function resetLine(d: PciDevice, r: MemberReset, hostDriver: string | null): string {
    const then = r.onRelease ? `; destroy resets it (${r.onRelease}) after unbinding it from vfio-pci, before ${hostDriver ?? "leaving it without a driver"}` : r.capability.verdict === "ok" ? "; no reset on destroy (resetOnRelease: false)" : "";
    return `${deviceLabel(d, r.capability)}: ${r.capability.text}${then}`;
}

/** The `reset_method` change the named device gets, its preview line and its ops (write, udev rule; undo). */
export interface ResetMethodChange {
    line: string;
    /** In the change's batch, before any driver moves: the kernel refuses an unsupported method (EINVAL) there. */
    write: Op[];
    /** With the persistence files: the udev rule. */
    persist: Op[];
    /** After a failed change: the list as it was, the rule removed when this change wrote it first. */
    undo: Op[];
    /** What `reset_method` read before the first change that set it (kept across updates; destroy restores it). */
    before: string;
}

/**
 * Plan `resetMethod` for `d`. `recordedBefore`: what the state says the list was before the binding first set it
 * (an update keeps that, so destroy restores the host's own list).
 */
export function planResetMethod(d: PciDevice, resetMethod: string, recordedBefore: string | undefined): ResetMethodChange {
    const now = d.resetMethods.join(" ");
    const before = recordedBefore ?? now;
    const path = `${PCI_DEVICES}/${d.address}/reset_method`;
    const rule = resetRuleFile(d.address);
    const same = resetMethod !== "default" && resetMethod === now;
    return {
        line: `${d.address} reset_method: ${same ? `${now}, no change` : `${now || "(none)"} → ${resetMethod}`} (kept across reboots by ${rule})`,
        write: same ? [] : [{ op: "write", path, data: resetMethod }],
        persist: [
            { op: "mkdir", path: UDEV_RULES_DIR, mode: 0o755 },
            { op: "put", path: rule, data: resetRuleText(d.address, resetMethod), mode: 0o600 },
        ],
        undo: [...(same ? [] : [{ op: "write", path, data: now || "\n", optional: true } as Op]), ...(recordedBefore === undefined ? [{ op: "remove", path: rule, optional: true } as Op] : [])],
        before,
    };
}

/** What destroy (or an update that drops `resetMethod`) does: the list read before back, the rule gone. */
export function unsetResetMethodOps(address: string, before: string): Op[] {
    return [
        { op: "write", path: `${PCI_DEVICES}/${address}/reset_method`, data: before || "\n", optional: true },
        { op: "remove", path: resetRuleFile(address), optional: true },
    ];
}

/**
 * The reset of one function on release, for the gap between `leave` (off vfio-pci) and `enter` (onto its host driver):
 * a guard that it is on no driver now (an unbind that did not happen stops the batch rather than reset a device a
 * driver holds), then the write of 1 to `reset`, not optional: a failed reset stops the batch there, the function on
 * no driver, and the caller binds it back to vfio-pci (binding/apply.ts).
 */
export function releaseResetOps(address: string): Op[] {
    return [
        { op: "readlink", path: `${PCI_DEVICES}/${address}/driver`, expect: "" },
        { op: "write", path: `${PCI_DEVICES}/${address}/reset`, data: "1", timeoutMs: RESET_TIMEOUT_MS },
    ];
}

/** Whether `op` is the reset write of {@link releaseResetOps}. */
export function isResetWrite(op: Op): op is Extract<Op, { op: "write" }> {
    return op.op === "write" && op.path.startsWith(`${PCI_DEVICES}/`) && op.path.endsWith("/reset") && op.data === "1";
}
