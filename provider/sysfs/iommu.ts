/**
 * IOMMU groups and VFIO viability (Documentation/driver-api/vfio.rst). A group is usable by a VM only when every
 * member is bound to a vfio driver, pci-stub, pcieport (bridges) or to no driver at all; otherwise QEMU fails with
 * "group N is not viable". The kernel does not refuse a non-viable bind (LAB.md), so the check is ours.
 */
import { baseHost } from "../host/lock";
import { Host, Op, OpResult } from "../host/types";
import { DRIVERCTL_DIR, Journal, journalGuard, parseJournal, readJournalOp, savedOverrides } from "./journal";
import { pidsOf } from "./proc";
import { BINDING_READ_OPS, DEVICE_READ_OPS, PCI_DEVICES, PCI_DRIVERS, PciDevice, bindingReadOps, deviceReadOps, driverFromLink, driverLinkOp, overrideOf, parseBindingDevice, parseDevice } from "./pci";

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
}

/**
 * What this program last saw of a device's group, per host: the other members and the group number (groups are
 * fixed at boot, so the next read of the same device asks for them in its first batch; only a hint, since the same
 * batch lists the group and a member the hint missed is read in a second round trip), and the whole view with the
 * group's `iommu_group/devices` listing exactly as the host answered it, for a batch that acts on it behind guards.
 */
interface GroupHint {
    others: string[];
    group: number | null;
    seen?: { view: GroupView; listing: string; journal: string; saved: string };
}
/** Keyed by the host outside any locked section: check reads the group on it, create acts under the lock. */
const groupHints = new WeakMap<Host, Map<string, GroupHint>>();

/**
 * The group of `address` as this program last read it on `host` (with changes it made since, see
 * {@link noteMemberStates}), or undefined; possibly stale, so act on it only behind its `guards`: reads with `expect`
 * (see the Host seam) that hold while the group is as the view says — nobody holds `/dev/vfio/<group>`, the group
 * has the same members, and every member has the same driver and `driver_override`. Put first in a `stopOnError`
 * batch, they stop it before its first write when anything changed.
 */
export function lastGroupView(host: Host, address: string): { view: GroupView; guards: Op[] } | undefined {
    const seen = groupHints.get(baseHost(host))?.get(address)?.seen;
    if (!seen) return undefined;
    const guards: Op[] = [
        { op: "groupHolders", path: `${PCI_DEVICES}/${address}`, guard: true },
        { op: "list", path: `${PCI_DEVICES}/${address}/iommu_group/devices`, expect: seen.listing.replace(/\n+$/, "") },
    ];
    for (const m of seen.view.members) {
        guards.push({ op: "readlink", path: `${PCI_DEVICES}/${m.address}/driver`, expect: m.driver ? `${PCI_DRIVERS}/${m.driver}` : "" });
        guards.push({ op: "read", path: `${PCI_DEVICES}/${m.address}/driver_override`, expect: m.override ?? "(null)" });
    }
    // What the plan took as "before us" (the binding's journal, driverctl's saved overrides) is as read too.
    guards.push(journalGuard(address, seen.journal), { op: "list", path: DRIVERCTL_DIR, expect: seen.saved.replace(/\n+$/, "") });
    return { view: seen.view, guards };
}

/**
 * Record what a change left the members of `address`'s group with (as read back), and a driver it registered, so
 * the next change planned from {@link lastGroupView} matches the host; `undefined` forgets the view (state unknown).
 */
export function noteMemberStates(host: Host, address: string, states: Map<string, { driver: string | null; override: string | null }> | undefined, registered?: string, journal?: { journal?: Journal; text: string }): void {
    const hint = groupHints.get(baseHost(host))?.get(address);
    if (!hint?.seen) return;
    if (!states) {
        delete hint.seen;
        return;
    }
    const { view } = hint.seen;
    const members = view.members.map((m) => (states.has(m.address) ? { ...m, ...states.get(m.address)! } : m));
    const drivers = registered && !view.drivers.includes(registered) ? [...view.drivers, registered] : view.drivers;
    hint.seen.view = { ...view, members, drivers, device: members.find((m) => m.address === address) ?? view.device };
    // The journal as the change left it: the caller passes the one it wrote or kept; none after a delete.
    hint.seen.journal = journal?.text ?? "";
    if (journal?.journal) hint.seen.view.journal = journal.journal;
    else delete hint.seen.view.journal;
}

/**
 * Read a device, its whole IOMMU group, the IOMMU status and the registered drivers: one round trip when the
 * group was seen before by this program (see `groupHints`), else two (the first learns the member list). The
 * `binding` view reads only what binding needs (see `bindingReadOps`), for the reads made under the host lock.
 * `extra` ops ride in the first batch (their results in `extra`); `then`, given those results, returns ops for the
 * second batch (their results in `then`), which is then always made.
 */
export async function readGroup(
    host: Host,
    address: string,
    extra: Op[] = [],
    view: "full" | "binding" = "full",
    then?: (extra: OpResult[]) => Op[],
): Promise<GroupView & { extra: OpResult[]; then: OpResult[] }> {
    const [readOps, count, parse] = view === "full" ? [deviceReadOps, DEVICE_READ_OPS, parseDevice] : [bindingReadOps, BINDING_READ_OPS, parseBindingDevice];
    let hints = groupHints.get(baseHost(host));
    if (!hints) groupHints.set(baseHost(host), (hints = new Map()));
    const hint = hints.get(address) ?? { others: [], group: null };
    // The binding view learns whether the IOMMU is on from the device's group link alone.
    const statusOps = view === "full" ? iommuStatusOps() : [];
    const first: Op[] = [
        ...readOps(address),
        { op: "list", path: `${PCI_DEVICES}/${address}/iommu_group/devices` },
        { op: "list", path: "/sys/bus/pci/drivers" },
        readJournalOp(address),
        { op: "list", path: DRIVERCTL_DIR },
        ...statusOps,
        ...extra,
        ...hint.others.flatMap((a) => readOps(a)),
    ];
    if (hint.group !== null) first.push({ op: "openers", path: `/dev/vfio/${hint.group}` });
    const r1 = await host.run(first);
    let at = 0;
    const take = (n: number) => r1.slice(at, (at += n));
    const device = parse(address, take(count));
    const [listed, driverList, journalRead, savedList] = take(4);
    const status = take(statusOps.length);
    const extraResults = take(extra.length);
    const hinted = new Map(hint.others.map((a) => [a, take(count)]));
    const membersListed = listed.ok ? listed.data.split("\n").filter(Boolean) : [];
    const drivers = driverList.ok ? driverList.data.split("\n").filter(Boolean) : [];
    const group = device?.group ?? null;
    const iommu = view === "full" ? parseIommuStatus(status) : { enabled: group !== null, groups: group === null ? [] : [group] };
    const others = membersListed.filter((a) => a !== address).sort();

    const missing = others.filter((a) => !hinted.has(a));
    const second: Op[] = missing.flatMap((a) => readOps(a));
    const openersKnown = group !== null && group === hint.group;
    if (group !== null && !openersKnown) second.push({ op: "openers", path: `/dev/vfio/${group}` });
    const openersAt = second.length - 1;
    const thenOps = then?.(extraResults) ?? [];
    second.push(...thenOps);
    const r2 = second.length ? await host.run(second) : [];
    missing.forEach((a, i) => hinted.set(a, r2.slice(i * count, (i + 1) * count)));

    const members = device ? [device] : [];
    for (const a of others) {
        const d = parse(a, hinted.get(a)!);
        if (d) members.push(d);
    }
    members.sort((a, b) => a.address.localeCompare(b.address));
    const openersResult = group === null ? undefined : openersKnown ? r1[r1.length - 1] : r2[openersAt];
    const openers = openersResult?.ok ? pidsOf(openersResult) : [];
    const journal = parseJournal(address, journalRead);
    const saved = savedList.ok ? savedList.data : "";
    const result: GroupView = { device, group, members, iommu, drivers, openers, savedOverrides: [...savedOverrides(savedList)] };
    if (journal.journal) result.journal = journal.journal;
    if (device) hints.set(address, listed.ok ? { others, group, seen: { view: result, listing: listed.data, journal: journal.text, saved } } : { others, group });
    else hints.delete(address);
    return { ...result, extra: extraResults, then: r2.slice(r2.length - thenOps.length) };
}

export interface GroupState {
    /** False when the device is gone. */
    exists: boolean;
    /** The device's group now (null: no group). */
    group: number | null;
    /** Driver and override of each member asked about; null for a member that is gone. */
    members: Map<string, { driver: string | null; override: string | null } | null>;
    /** PIDs that hold `/dev/vfio/<group>` open. */
    openers: number[];
    /** The results of the caller's `extra` ops, in order. */
    extra: OpResult[];
}

/**
 * What releasing a group needs, in one round trip: the group link of `address`, each member's driver and
 * `driver_override`, who holds the group's `/dev/vfio` node, and the caller's `extra` reads.
 */
export async function readGroupState(host: Host, address: string, members: string[], extra: Op[] = []): Promise<GroupState> {
    const ops: Op[] = [{ op: "readlink", path: `${PCI_DEVICES}/${address}/iommu_group` }];
    for (const a of members) ops.push(driverLinkOp(a), { op: "read", path: `${PCI_DEVICES}/${a}/driver_override` });
    ops.push({ op: "groupHolders", path: `${PCI_DEVICES}/${address}` });
    const r = await host.run([...ops, ...extra]);
    const extraResults = r.splice(ops.length);
    const link = r[0].ok ? r[0].data.trim() : "";
    const group = link ? Number(link.slice(link.lastIndexOf("/") + 1)) : null;
    const state = new Map<string, { driver: string | null; override: string | null } | null>();
    members.forEach((a, i) => {
        const [drv, ov] = r.slice(1 + 2 * i, 3 + 2 * i);
        state.set(a, ov.ok ? { driver: driverFromLink(drv), override: overrideOf(ov.data) } : null);
    });
    const held = r[r.length - 1];
    const openers = held.ok ? pidsOf(held) : [];
    const exists = state.has(address) ? state.get(address) !== null : r[0].ok;
    return { exists, group, members: state, openers, extra: extraResults };
}
