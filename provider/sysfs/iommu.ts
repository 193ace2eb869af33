/**
 * IOMMU groups and VFIO viability (Documentation/driver-api/vfio.rst). A group is usable by a VM only when every
 * member is bound to a vfio driver, pci-stub, pcieport (bridges) or to no driver at all; otherwise QEMU fails with
 * "group N is not viable". The kernel does not refuse a non-viable bind (LAB.md), so the check is ours.
 */
import { BatchQuery, Part } from "../host/query";
import { Host, Op, OpResult } from "../host/types";
import { DRIVERCTL_DIR, Journal, journalGuard, parseJournal, readJournalOp, savedOverrides } from "./journal";
import { pidsOf } from "./proc";
import type { ResetContext } from "../reset/plan";
import { PCI_DEVICES, PCI_DRIVERS, PciDevice, driverFromLink, driverLinkOp, overrideOf, deviceQuery } from "./pci";

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
    /** The journal of the binding named by this address: what its members had before it (see sysfs/journal.ts). */
    journal?: Journal;
    /** Addresses with an override saved by driverctl (`/etc/driverctl.d/pci-<address>`): the host's own. */
    savedOverrides?: string[];
    /** Every PCI address and whether vendor-reset is loaded: what the members' reset capability needs (reset/plan.ts). */
    resetContext?: ResetContext;
}

/**
 * What a read saw of a device's group, to be passed to the next read or change of the same device: the other members
 * and the group number (groups are fixed at boot, so the next read asks for them in its first batch; only a hint,
 * since the same batch lists the group and a member the hint missed is read in a second round trip), and, unless a
 * change since left the host unknown, the whole view with the group's `iommu_group/devices` listing, the journal
 * and driverctl's directory exactly as the host answered, for a batch that acts on it behind {@link groupGuards}.
 */
export interface GroupObservation {
    others: string[];
    group: number | null;
    seen?: GroupSeen;
}

export interface GroupSeen {
    view: GroupView;
    listing: string;
    journal: string;
    saved: string;
}

/**
 * Guards for a batch planned from `seen` (reads with `expect`, see the Host seam) that hold while the group is as
 * the view says: nobody holds `/dev/vfio/<group>`, the group has the same members, every member has the same driver
 * and `driver_override`, and what the plan took as "before us" (the binding's journal, driverctl's saved overrides)
 * is as read. Put first in a `stopOnError` batch, they stop it before its first write when anything changed.
 */
export function groupGuards(address: string, seen: GroupSeen): Op[] {
    const guards: Op[] = [
        { op: "groupHolders", path: `${PCI_DEVICES}/${address}`, guard: true },
        { op: "list", path: `${PCI_DEVICES}/${address}/iommu_group/devices`, expect: seen.listing.replace(/\n+$/, "") },
    ];
    for (const m of seen.view.members) {
        guards.push({ op: "readlink", path: `${PCI_DEVICES}/${m.address}/driver`, expect: m.driver ? `${PCI_DRIVERS}/${m.driver}` : "" });
        guards.push({ op: "read", path: `${PCI_DEVICES}/${m.address}/driver_override`, expect: m.override ?? "(null)" });
    }
    guards.push(journalGuard(address, seen.journal), { op: "list", path: DRIVERCTL_DIR, expect: seen.saved.replace(/\n+$/, "") });
    return guards;
}

/**
 * The observation after a change that left the members of `address`'s group with `states` (as read back), possibly
 * registering a driver, with the binding's journal as it left it (none after a delete); `states` undefined: what the
 * host has is unknown (a failed change), only the member hint is kept.
 */
export function afterChange(
    o: GroupObservation | undefined,
    address: string,
    states: Map<string, { driver: string | null; override: string | null }> | undefined,
    registered?: string,
    journal?: { journal?: Journal; text: string },
): GroupObservation | undefined {
    if (!o?.seen) return o;
    if (!states) return { others: o.others, group: o.group };
    const { view } = o.seen;
    const members = view.members.map((m) => (states.has(m.address) ? { ...m, ...states.get(m.address)! } : m));
    const drivers = registered && !view.drivers.includes(registered) ? [...view.drivers, registered] : view.drivers;
    const next: GroupView = { ...view, members, drivers, device: members.find((m) => m.address === address) ?? view.device };
    if (journal?.journal) next.journal = journal.journal;
    else delete next.journal;
    return { ...o, seen: { ...o.seen, view: next, journal: journal?.text ?? "" } };
}

/** What a caller adds to {@link readGroup}'s batches. */
export interface GroupReadOptions<E, T> {
    /** `binding`: only what binding needs of each member (see `bindingReadOps`), for the reads made under the host
     *  lock; the IOMMU is then known to be on from the device's group link alone. Default `full`. */
    view?: "full" | "binding";
    /** More reads in the first batch; their value is the result's `extra`. */
    extra?: (q: BatchQuery) => Part<E>;
    /** Given `extra`'s value, reads for a second batch (which is then always made); their value is `then`. */
    then?: (extra: E, q: BatchQuery) => Part<T>;
}

/**
 * Read a device, its whole IOMMU group, the IOMMU status, the registered drivers, the binding's journal and
 * driverctl's saved overrides: one round trip when `seen` (the last observation of this device on this host) names
 * the group's members, else two (the first learns the member list). Returns the view, the caller's `extra` and
 * `then` values, and the observation to pass to the next read or change (undefined when the device is absent).
 */
export async function readGroup<E = undefined, T = undefined>(
    host: Host,
    address: string,
    seen?: GroupObservation,
    opts: GroupReadOptions<E, T> = {},
): Promise<GroupView & { extra: E; then: T; observation?: GroupObservation }> {
    const kind = opts.view ?? "full";
    const hint = seen ?? { others: [], group: null };
    const q = new BatchQuery();
    const device = deviceQuery(q, address, kind);
    const listed = q.one({ op: "list", path: `${PCI_DEVICES}/${address}/iommu_group/devices` }, (r) => r);
    const driverList = q.one({ op: "list", path: "/sys/bus/pci/drivers" }, (r) => (r.ok ? r.data.split("\n").filter(Boolean) : []));
    const journalRead = q.one(readJournalOp(address), (r) => r);
    const savedList = q.one({ op: "list", path: DRIVERCTL_DIR }, (r) => r);
    const status = kind === "full" ? q.add(iommuStatusOps(), parseIommuStatus) : undefined;
    const resetContext = q.add(resetContextOps(), parseResetContext);
    const extra = opts.extra?.(q);
    const hinted = new Map(hint.others.map((a) => [a, deviceQuery(q, a, kind)] as const));
    const openersHinted = hint.group === null ? undefined : q.one({ op: "openers", path: `/dev/vfio/${hint.group}` }, pidsIfOk);
    const r1 = await q.run(host);

    const dev = device(r1);
    const listing = listed(r1);
    const group = dev?.group ?? null;
    const others = (listing.ok ? listing.data.split("\n").filter(Boolean) : []).filter((a) => a !== address).sort();
    const extraValue = extra?.(r1) as E;

    // The members the hint missed, who holds the group when the hint named another, and the caller's second reads.
    const q2 = new BatchQuery();
    const missing = new Map(others.filter((a) => !hinted.has(a)).map((a) => [a, deviceQuery(q2, a, kind)] as const));
    const openersKnown = group !== null && group === hint.group;
    const openersRead = group !== null && !openersKnown ? q2.one({ op: "openers", path: `/dev/vfio/${group}` }, pidsIfOk) : undefined;
    const then = opts.then?.(extraValue, q2);
    const r2 = await q2.runIfAny(host);

    const members = dev ? [dev] : [];
    for (const a of others) {
        const part = hinted.get(a);
        const d = part ? part(r1) : missing.get(a)!(r2);
        if (d) members.push(d);
    }
    members.sort((x, y) => x.address.localeCompare(y.address));
    const openers = group === null ? [] : openersKnown ? openersHinted!(r1) : openersRead!(r2);
    const journal = parseJournal(address, journalRead(r1));
    const saved = savedList(r1);
    const view: GroupView = {
        device: dev,
        group,
        members,
        iommu: status ? status(r1) : { enabled: group !== null, groups: group === null ? [] : [group] },
        drivers: driverList(r1),
        openers,
        savedOverrides: [...savedOverrides(saved)],
        resetContext: resetContext(r1),
    };
    if (journal.journal) view.journal = journal.journal;
    const observation: GroupObservation | undefined = !dev
        ? undefined
        : listing.ok
          ? { others, group, seen: { view, listing: listing.data, journal: journal.text, saved: saved.ok ? saved.data : "" } }
          : { others, group };
    return { ...view, extra: extraValue, then: then?.(r2) as T, observation };
}

/** Two listings (builtins in the batch interpreter, no process): the host's PCI addresses and vendor-reset's module. */
export function resetContextOps(): Op[] {
    return [
        { op: "list", path: PCI_DEVICES },
        { op: "list", path: "/sys/module/vendor_reset" },
    ];
}

export function parseResetContext([devices, module]: OpResult[]): ResetContext {
    return { pciAddresses: devices?.ok ? devices.data.split("\n").filter(Boolean) : [], vendorResetLoaded: !!module?.ok };
}

const pidsIfOk = (r: OpResult) => (r.ok ? pidsOf(r) : []);

export interface GroupState {
    /** False when the device is gone. */
    exists: boolean;
    /** The device's group now (null: no group). */
    group: number | null;
    /** Driver and override of each member asked about; null for a member that is gone. */
    members: Map<string, { driver: string | null; override: string | null } | null>;
    /** PIDs that hold `/dev/vfio/<group>` open. */
    openers: number[];
}

/**
 * What releasing a group needs, in one round trip: the group link of `address`, each member's driver and
 * `driver_override`, who holds the group's `/dev/vfio` node, and the caller's `extra` reads (their value: `extra`).
 */
export async function readGroupState<E = undefined>(host: Host, address: string, members: string[], extra?: (q: BatchQuery) => Part<E>): Promise<GroupState & { extra: E }> {
    const q = new BatchQuery();
    const link = q.one({ op: "readlink", path: `${PCI_DEVICES}/${address}/iommu_group` }, (r) => r);
    const states = q.each(members, (a): Op[] => [driverLinkOp(a), { op: "read", path: `${PCI_DEVICES}/${a}/driver_override` }], (a, [drv, ov]) => [a, ov.ok ? { driver: driverFromLink(drv), override: overrideOf(ov.data) } : null] as const);
    const held = q.one({ op: "groupHolders", path: `${PCI_DEVICES}/${address}` }, pidsIfOk);
    const extraPart = extra?.(q);
    const r = await q.run(host);
    const l = link(r);
    const target = l.ok ? l.data.trim() : "";
    const group = target ? Number(target.slice(target.lastIndexOf("/") + 1)) : null;
    const state = new Map(states(r));
    const exists = state.has(address) ? state.get(address) !== null : l.ok;
    return { exists, group, members: state, openers: held(r), extra: extraPart?.(r) as E };
}
