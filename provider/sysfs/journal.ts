/**
 * The binding journal: what each member of a group had (driver and `driver_override`) before the binding first
 * changed it, written on the host in the same batch as a change's first write. A provider killed mid-change
 * (SIGKILL, a lost SSH session, a power cut of the machine running `pulumi up`) leaves it behind, and the next
 * create, read or delete of the binding adopts it: what the host had before us is never lost to the half-bound
 * state a crash leaves.
 *
 * Create and update leave it in place when they succeed, and delete removes it in the batch that verifies every
 * member is back. A create is complete only once the engine has saved its outputs, which happens after our last
 * batch: a provider killed in between has bound the group with nothing in the state, and the next `up` must still
 * learn the host's own drivers from somewhere. A rollback that put the group back as it found it removes it too.
 *
 * Where: /var/lib/pulumi-vfio, not /run. A change may outlive a reboot (`persistent: true` writes
 * /etc/driverctl.d, which driverctl applies at boot), so the record of what came before must outlive it too; a
 * journal in /run would vanish with the reboot while the half-made binding comes back. Left over after a reboot
 * without persistence, it still names the drivers the host boots with, so adopting it is harmless. The directory
 * is 0700 and the file 0600 (root's business: it steers which driver a device is handed to).
 */
import { Op, OpResult } from "../host/types";
import { DeviceState, PCI_DEVICES, PCI_DRIVERS, assertDriverName, parseAddress } from "./pci";

export const JOURNAL_DIR = "/var/lib/pulumi-vfio";

/** The journal of the binding named by `address` (the resource's id: the device asked for, not its group number,
 *  which may change across reboots). */
export function journalPath(address: string): string {
    return `${JOURNAL_DIR}/binding-${parseAddress(address)}.json`;
}

/** driverctl's saved overrides (`driverctl set-override` without `--nosave`), applied at boot. */
export const DRIVERCTL_DIR = "/etc/driverctl.d";
export const driverctlFile = (address: string) => `${DRIVERCTL_DIR}/pci-${parseAddress(address)}`;

export interface JournalEntry extends DeviceState {
    address: string;
}

export interface Journal {
    /** The binding's address (the key). */
    address: string;
    /** What each member had before the first change of this binding. */
    members: JournalEntry[];
}

/** The journal recording `members` as the state before the binding, and its file's text. */
export function journalOf(address: string, members: JournalEntry[]): { journal: Journal; text: string } {
    const journal: Journal = { address: parseAddress(address), members: members.map(({ address: a, driver, override, probe }) => ({ address: a, driver, override, ...(probe ? { probe } : {}) })) };
    return { journal, text: JSON.stringify(journal) + "\n" };
}

/**
 * The ops that write a journal: first in a change's batch, before any write. A new journal is written in place
 * (`inPlace`, no process): a write cut short leaves an empty file, which {@link parseJournal} takes as no journal,
 * and rightly so, since it comes before the change's first write. One that exists is replaced by rename, so what it
 * recorded is never lost to a half-written file.
 */
export function writeJournalOps(address: string, text: string): Op[] {
    return [
        { op: "mkdir", path: JOURNAL_DIR, mode: 0o700 },
        { op: "put", path: journalPath(address), data: text, mode: 0o600, inPlace: true },
    ];
}

export function readJournalOp(address: string): Op {
    return { op: "read", path: journalPath(address) };
}

/** A guard that holds while the journal is as read (`text` "" = absent), see the Host seam's `expect`. */
export function journalGuard(address: string, text: string): Op {
    return { op: "read", path: journalPath(address), expect: text.replace(/\n+$/, "") };
}

export function dropJournalOp(address: string): Op {
    return { op: "remove", path: journalPath(address) };
}

/**
 * The journal from a read's result; undefined when absent. What it names becomes sysfs paths, so every address and
 * driver is validated; a file that does not parse is reported rather than trusted or ignored (it is only ever
 * written by us, atomically, so a bad one means someone edited it).
 * @throws Error naming the file and what is wrong with it.
 */
export function parseJournal(address: string, r: OpResult | undefined): { journal?: Journal; text: string } {
    // Empty: a new journal's write cut short, before the change's first write (see writeJournalOps).
    if (!r?.ok || r.data === "") return { text: "" };
    const path = journalPath(address);
    try {
        const j = JSON.parse(r.data) as Journal;
        if (!j || !Array.isArray(j.members)) throw new Error("no members list");
        const members = j.members.map((m): JournalEntry => {
            const driver = m.driver === null ? null : String(m.driver);
            const override = m.override === null ? null : String(m.override);
            if (driver !== null) assertDriverName(driver);
            if (override !== null) assertDriverName(override);
            return { address: parseAddress(m.address), driver, override, ...(m.probe === true ? { probe: true } : {}) };
        });
        return { journal: { address: parseAddress(j.address), members }, text: r.data };
    } catch (e) {
        throw new Error(`${path} is not a journal pulumi-vfio wrote (${(e as Error).message}): it records the drivers this host had before a change that did not finish; restore them by hand if you know them, then remove the file`);
    }
}

/** driverctl's saved addresses from a `list` of {@link DRIVERCTL_DIR} (absent directory: none). */
export function savedOverrides(r: OpResult | undefined): Set<string> {
    const names = r?.ok ? r.data.split("\n").filter((n) => n.startsWith("pci-")) : [];
    return new Set(names.map((n) => n.slice(4)));
}

/**
 * What a member had before us when neither the state nor a journal says: its state now, except an override of the
 * driver we bind that nobody recorded (no journal, no driverctl file). That is what a change killed before it
 * could keep a journal leaves (or an `echo vfio-pci > driver_override` by hand); its own driver is unknown, so it
 * goes back to the kernel's driver matching (`probe`).
 */
export function stateBefore(d: { address: string; driver: string | null; override: string | null }, driver: string, saved: Set<string>): DeviceState {
    if (d.override !== null && d.override === driver && !saved.has(d.address)) return { driver: null, override: null, probe: true };
    return { driver: d.driver, override: d.override };
}

/** Whether a member is as `to` says: the driver for an exact restore, no override and not `left` (the driver we
 *  bound) for a restore to the kernel's driver matching. */
export function reached(to: DeviceState, driver: string | null, override: string | null, left?: string): boolean {
    if (to.probe) return override === null && (left === undefined || driver !== left);
    return driver === to.driver;
}

/** Guards that hold once every member is as `to` says (driver and override; for a `probe` target, no override),
 *  so the journal's removal after them runs only then. */
export function arrivedGuards(members: { address: string; to: DeviceState }[]): Op[] {
    return members.flatMap(({ address, to }): Op[] => {
        const override: Op = { op: "read", path: `${PCI_DEVICES}/${address}/driver_override`, expect: to.override ?? "(null)" };
        if (to.probe) return [override];
        return [{ op: "readlink", path: `${PCI_DEVICES}/${address}/driver`, expect: to.driver ? `${PCI_DRIVERS}/${to.driver}` : "" }, override];
    });
}
