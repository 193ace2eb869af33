/**
 * IommuBinding: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this device and its IOMMU
 * group belong to vfio-pci".
 *
 * - check: validate the inputs, then read the host (nothing changes) and resolve the device, refuse what would
 *   break (bridge, boot VGA, a host-critical member such as the chipset's LPC/SMBus or the disk the host runs from,
 *   unknown driver, a group left non-viable, IOMMU off), and list the planned per-device driver changes in `plan`,
 *   which `pulumi preview` shows.
 * - create/update: under the host lock, load the driver module if needed and run driverctl's sequence for each
 *   member in one batch (right after check, planned from what check read and guarded, see `converge`); read every
 *   `driver` link back; on any failure restore every member to exactly its previous driver and override, then fail
 *   with the file, errno and a hint.
 * - read: the real state; the device gone → resource gone; a member off the driver → drift for `up` to repair.
 * - delete: refuse while a process holds /dev/vfio/<group> (the kernel would block forever); otherwise restore
 *   previous drivers and remove the persistence files it wrote.
 *
 * Each function takes an optional last `onHost`: the dynamic provider passes none (the host comes from
 * `connection`); tests pass a fake or the lab's kernel.
 */
import { CheckFailure, CheckResult, containsUnknown, isUnknown, schemaDefault, validate, withoutProvider, DiffResult } from "./check";
import { PlanError, SysfsError } from "./errors";
import { Connection, hostIdentity } from "./host/ssh";
import { Host, Op } from "./host/types";
import { withHost } from "./host";
import { describeHolders, pidsOf } from "./sysfs/proc";
import { GroupView, IOMMU_OFF_FIX, isVfioDriver, lastGroupView, noteMemberStates, readGroup, readGroupState, viabilityProblems } from "./sysfs/iommu";
import {
    DeviceState,
    PCI_DRIVERS,
    PciDevice,
    assertDriverName,
    bindOps,
    classLabel,
    driverFromLink,
    driverLinkOp,
    firstFailure,
    isAddress,
    isBridge,
    moduleOf,
    overrideOf,
    PCI_DEVICES,
    parseAddress,
    restoreOps,
} from "./sysfs/pci";
import { DeviceSelector, resolveSelector, scanHost } from "./sysfs/scan";
import { CriticalReads, HostUses, criticalReadOps, hostCriticalReason, linkOps, parseCriticalReads, traceUses } from "./sysfs/critical";
import { DRIVERCTL_DIR, JournalEntry, arrivedGuards, driverctlFile, dropJournalOp, journalOf, parseJournal, reached, readJournalOp, stateBefore, writeJournalOps } from "./sysfs/journal";
import type { IommuBindingSchemaInputs } from "./generated/inputs";

/** The schema's inputs (provider/generated/inputs.ts, from schema/iommu-binding.schema.json) and what check adds. */
export interface IommuBindingInputs extends IommuBindingSchemaInputs {
    /** Set by check: the resolved address. */
    address?: string;
    /** Set by check: one line per device whose driver will change. */
    plan?: string[];
}

/** One function of the bound IOMMU group, as the `members` output lists it. */
export interface BindingMember {
    /** Its PCI address (`0000:01:00.1`). */
    address: string;
    /** PCI vendor id, 4 hex digits without 0x (`10de`); sysfs `vendor`. */
    vendor: string;
    /** PCI device id, 4 hex digits (`2204`); sysfs `device`. */
    device: string;
    /** Subsystem vendor id (the board maker); sysfs `subsystem_vendor`. */
    subsystemVendor: string;
    /** Subsystem device id; sysfs `subsystem_device`. */
    subsystemDevice: string;
    /** PCI class code, 6 hex digits (`030000` VGA, `040300` HD audio); sysfs `class`. */
    class: string;
    /** The class in words (`VGA controller`, `Audio device`). */
    className: string;
    /** Driver before we bound it (restored on delete); null = none. */
    previousDriver: string | null;
    /** `driver_override` before we bound it (restored on delete); null = unset. */
    previousOverride: string | null;
    /** True when what the member had before us is unknown: found with an override of our driver that neither a
     *  journal nor driverctl recorded (see sysfs/journal.ts). Delete then clears the override and lets the kernel's
     *  driver matching choose (`drivers_probe`), as a reboot would; `previousDriver`/`previousOverride` are null. */
    previousProbe?: boolean;
    /** Driver now. */
    driver: string | null;
    /** Whether this binding manages the member (false for bridges and, with wholeGroup off, the others). */
    managed: boolean;
}

export interface IommuBindingOutputs extends IommuBindingInputs {
    address: string;
    driver: string;
    wholeGroup: boolean;
    allowBootVga: boolean;
    persistent: boolean;
    group: number;
    /** `/dev/vfio/<group>` for vfio drivers, else null. */
    vfioDevice: string | null;
    members: BindingMember[];
}

export { DRIVERCTL_DIR, driverctlFile };
const DRIVERCTL_BINARIES = ["/usr/sbin/driverctl", "/usr/bin/driverctl"];

const SCHEMA = "iommu-binding.schema.json";
/** The schema's defaults for inputs validate() did not fill (an older state, diff, read). */
const defaults = (i: IommuBindingInputs) => ({
    driver: i.driver ?? schemaDefault<string>(SCHEMA, "driver"),
    wholeGroup: i.wholeGroup ?? schemaDefault<boolean>(SCHEMA, "wholeGroup"),
    allowBootVga: i.allowBootVga ?? schemaDefault<boolean>(SCHEMA, "allowBootVga"),
    persistent: i.persistent ?? schemaDefault<boolean>(SCHEMA, "persistent"),
});

// ------------------------------------------------------------------------------------------------ planning

export interface MemberPlan {
    device: PciDevice;
    /** The driver the member will have; null = leave it as it is. */
    target: string | null;
    /** What delete restores. */
    previous: DeviceState;
    managed: boolean;
}

export interface BindingPlan {
    group: number | null;
    members: MemberPlan[];
    problems: CheckFailure[];
    /** Human lines for the preview: `0000:01:00.1 (Audio device 8086:2668): snd_hda_intel → vfio-pci`. */
    lines: string[];
}

export interface PlanFacts {
    view: GroupView;
    /** What the host uses (mounts, swap, the SSH session) by PCI address; absent: not read (the class still counts). */
    uses?: HostUses;
    /** PCI addresses behind the device when it is a bridge (its sysfs directory's PCI children). */
    behind?: string[];
    /** The driver exists on the host (registered, or modprobe finds its module). */
    driverKnown: boolean;
    driverctlInstalled: boolean;
    /** Members managed before (from the state), with what they had before us. */
    previous?: BindingMember[];
}

/**
 * Decide what a binding does to each member of the group, and what makes it impossible. Pure: the host facts are
 * read beforehand, so the same function serves check, create, update and the unit tests.
 */
export function planBinding(inputs: IommuBindingInputs & { address: string }, facts: PlanFacts): BindingPlan {
    const { driver, wholeGroup, allowBootVga, persistent } = defaults(inputs);
    const { view } = facts;
    const problems: CheckFailure[] = [];
    const fail = (property: string, reason: string) => problems.push({ property, reason });
    const address = inputs.address;

    if (!view.device) {
        fail("device", `no PCI device ${address} on this host; \`pulumi-vfio inventory\` lists the devices`);
        return { group: null, members: [], problems, lines: [] };
    }
    if (!view.iommu.enabled || view.group === null) {
        fail("device", `cannot bind ${address}: ${IOMMU_OFF_FIX}`);
        return { group: null, members: [], problems, lines: [] };
    }
    if (isBridge(view.device)) fail("device", bridgeMessage(view.device, facts.behind, view.members));
    if (!facts.driverKnown) {
        fail("driver", `driver ${JSON.stringify(driver)} is neither registered (/sys/bus/pci/drivers) nor a module modprobe can load on this host; use vfio-pci or pci-stub, or install its module`);
    }
    if (persistent && !facts.driverctlInstalled) {
        fail("persistent", "persistent: true needs driverctl on the host (it applies /etc/driverctl.d at boot): install it (apt install driverctl / dnf install driverctl), or set persistent: false");
    }

    const prevBy = new Map((facts.previous ?? []).filter((m) => m.managed).map((m) => [m.address, m]));
    const members: MemberPlan[] = view.members.map((d) => {
        const managed = !isBridge(d) && (wholeGroup || d.address === address);
        const prev = prevBy.get(d.address);
        const previous: DeviceState = prev ? recordedState(prev) : hostStateBefore(d, view, driver);
        // A member we managed before and no longer do goes back to what it had before us.
        const target = managed ? driver : prev ? previous.driver : null;
        return { device: d, target, previous, managed };
    });

    for (const m of members) {
        if (m.managed && m.device.bootVga && !allowBootVga && m.device.driver !== driver) {
            const self = m.device.address === address;
            fail(
                "allowBootVga",
                `${m.device.address} is the host's boot console GPU (boot_vga=1)${self ? "" : ` in the same IOMMU group as ${address}`}: binding it away takes the host's console (efifb/simpledrm hold its BAR). Set allowBootVga: true if this host is headless or uses another GPU`,
            );
        }
    }

    const allowed = new Set(inputs.allowHostCritical ?? []);
    const critical = members.flatMap((m) => {
        if (!m.managed || m.target === m.device.driver || allowed.has(m.device.address)) return [];
        const why = hostCriticalReason(m.device, facts.uses ?? null);
        return why ? [{ m, why }] : [];
    });
    const allowAll = JSON.stringify([...allowed, ...critical.map((c) => c.m.device.address)]);
    for (const { m, why } of critical) {
        const d = m.device;
        const self = d.address === address;
        fail(
            "allowHostCritical",
            `${d.address} (${classLabel(d.class)} ${d.vendor}:${d.device}, on ${d.driver ?? "no driver"})${self ? "" : `, in IOMMU group ${view.group} with ${address},`} ${why}: binding ${self ? "it" : "the group"} to ${driver} takes it from the host. ` +
                `${self ? "Pass through another device" : "Pass through a device whose group holds nothing the host needs (`pulumi-vfio inventory` says which groups to bind)"}, or, if the host can really do without it, set allowHostCritical: ${allowAll}`,
        );
    }

    const finalState = members.map((m) => ({ address: m.device.address, driver: m.target ?? m.device.driver }));
    if (isVfioDriver(driver)) {
        const bad = viabilityProblems(finalState);
        if (bad.length) {
            fail(
                "wholeGroup",
                `IOMMU group ${view.group} would not be viable (QEMU would refuse it: "group ${view.group} is not viable"): ${bad.join(", ")}. Keep wholeGroup: true so every member is bound, or bind those devices to vfio-pci/pci-stub first`,
            );
        }
    }

    const changes = members.filter((m) => m.target !== null && m.target !== m.device.driver);
    if (changes.length && view.openers.length) {
        fail("device", `IOMMU group ${view.group} is in use: /dev/vfio/${view.group} is held open by PID ${view.openers.join(", ")}; stop the VM before changing drivers`);
    }

    const lines = members.map((m) => {
        const d = m.device;
        const note = beforeNote(m, !prevBy.has(d.address) && !!view.journal?.members.some((e) => e.address === d.address));
        const what = `${d.address} (${classLabel(d.class)} ${d.vendor}:${d.device})`;
        if (m.target === null) return `${what}: ${d.driver ?? "no driver"}, left as is${isBridge(d) ? " (bridge)" : ""}`;
        if (m.target === d.driver) return `${what}: ${d.driver}${note}, no change`;
        return `${what}: ${d.driver ?? "no driver"} → ${m.target}${note}`;
    });
    return { group: view.group, members, problems, lines };
}

/**
 * What is true of a bridge named as the device: it cannot be passed through (a VM gets endpoints; the bridge is the
 * host's path to them), it is left on the driver it has (pcieport for PCIe ports) or on none, and what to bind instead.
 */
export function bridgeMessage(d: PciDevice, behind: string[] | undefined, members: PciDevice[]): string {
    const left = d.driver ? `stays on ${d.driver}` : "has no driver and is left as is";
    const label = (a: string) => {
        const m = members.find((x) => x.address === a);
        return m ? `${a} (${classLabel(m.class)} ${m.vendor}:${m.device})` : a;
    };
    const next =
        d.class.startsWith("0600")
            ? "It is the host's root complex, not a device a VM can use; bind an endpoint device (`pulumi-vfio inventory` lists them)"
            : behind === undefined
              ? "Bind the device behind it instead"
            : behind.length
              ? `Bind the device behind it instead: ${behind.map(label).join(", ")}`
              : "Nothing is behind it on this host; bind an endpoint device (`pulumi-vfio inventory` lists them)";
    return `${d.address} is a ${classLabel(d.class)} (class ${d.class.slice(0, 4)}); a bridge cannot be passed through to a VM, and this one ${left}. ${next}`;
}

// ------------------------------------------------------------------------------------------------ host facts

function factOps(driver: string): Op[] {
    return [
        { op: "exec", argv: ["modprobe", "-n", "-q", driver] },
        ...DRIVERCTL_BINARIES.map((p): Op => ({ op: "stat", path: p })),
    ];
}

/**
 * The host facts a plan needs. `probe` asks modprobe whether an unregistered driver exists and looks for driverctl
 * (check does; create/update need not: modprobe itself fails clearly, and check already vetted persistence). Both
 * start processes, which on a busy host cost more than the rest of the batch.
 */
async function readFacts(host: Host, address: string, driver: string, previous?: BindingMember[], probe = true): Promise<PlanFacts> {
    // check (probe) shows the whole picture; create and update, under the lock, read only what binding needs.
    if (!probe) {
        const view = await readGroup(host, address, [], "binding");
        return { view, driverKnown: true, driverctlInstalled: true, previous };
    }
    // The host's uses (mounts, swap, SSH session) ride on the group's two batches: names in the first, the sysfs
    // links they lead to in the second; only a stacked device (dm, md) costs a further round trip per level.
    const own = [...factOps(driver), { op: "list", path: `${PCI_DEVICES}/${address}` } as Op];
    let reads: CriticalReads | undefined;
    const view = await readGroup(host, address, [...own, ...criticalReadOps()], "full", (ex) => linkOps((reads = parseCriticalReads(ex.slice(own.length))).uses));
    const [modprobe, ...rest] = view.extra;
    const driverctl = rest.slice(0, DRIVERCTL_BINARIES.length);
    const children = rest[DRIVERCTL_BINARIES.length];
    return {
        view,
        driverKnown: view.drivers.includes(driver) || !!modprobe?.ok,
        driverctlInstalled: driverctl.some((r) => r.ok),
        previous,
        uses: await traceUses(host, reads!, view.then),
        behind: children?.ok ? children.data.split("\n").filter(isAddress).sort() : undefined,
    };
}

/** The address a device input names, resolving a selector against the host (one scan). */
async function resolveAddress(host: Host, device: string | DeviceSelector): Promise<string> {
    if (typeof device === "string") return parseAddress(device);
    const scan = await scanHost(host);
    return resolveSelector(scan.devices, device).address;
}

// ------------------------------------------------------------------------------------------------ check / diff

/**
 * Validate and normalize inputs. Reads the host (never writes) unless something it needs is unknown in preview.
 * Returns `address` (resolved) and `plan` (the per-device changes) in the inputs, so `pulumi preview` shows them.
 */
export async function check(olds: Record<string, any>, news: Record<string, any>, onHost?: Host): Promise<CheckResult<IommuBindingInputs>> {
    const { inputs, failures: schemaFailures } = validate<IommuBindingInputs>("iommu-binding.schema.json", news);
    // An address that fails the schema's pattern gets parseAddress's message, which says what form to use.
    const addressFailure = typeof inputs.device === "string" && !isUnknown(inputs.device) && !safeAddress(inputs.device) ? addressMessage(inputs.device) : undefined;
    // Likewise each allowHostCritical entry that is a string but no address.
    const allowList = Array.isArray(inputs.allowHostCritical) ? inputs.allowHostCritical : [];
    const allowFailures = allowList.flatMap((a, i) => (typeof a === "string" && !isUnknown(a) && !safeAddress(a) ? [{ property: `allowHostCritical[${i}]`, reason: `allowHostCritical[${i}]: ${addressMessage(a)}` }] : []));
    const failures = schemaFailures.filter((f) => !(addressFailure && f.property === "device") && !allowFailures.some((a) => a.property === f.property));
    if (addressFailure) failures.unshift({ property: "device", reason: `device: ${addressFailure}` });
    failures.push(...allowFailures);
    if (failures.length) return { inputs, failures };
    if (containsUnknown(inputs.device) || containsUnknown(inputs.connection) || isUnknown(inputs.driver) || containsUnknown(inputs.allowHostCritical)) {
        // Preview of a value computed later: the host is checked again when it is known.
        delete inputs.plan;
        delete inputs.address;
        return { inputs, failures: [] };
    }
    if (allowList.length && !containsUnknown(allowList)) inputs.allowHostCritical = [...new Set(allowList.map((a) => safeAddress(a)!))];
    try {
        assertDriverName(defaults(inputs).driver);
        await withHost(inputs.connection, async (host) => {
            let address: string;
            try {
                address = await resolveAddress(host, inputs.device);
            } catch (e) {
                if ((e as Error).name === "ConnectionError") throw e;
                failures.push({ property: "device", reason: (e as Error).message });
                return;
            }
            const previous = (olds?.members as BindingMember[] | undefined) ?? undefined;
            const sameDevice = olds?.address === address;
            const facts = await readFacts(host, address, defaults(inputs).driver, sameDevice ? previous : undefined);
            const plan = planBinding({ ...inputs, address }, facts);
            failures.push(...plan.problems);
            inputs.address = address;
            inputs.plan = plan.lines;
        }, onHost);
    } catch (e) {
        const err = e as Error;
        failures.push({ property: err.name === "ConnectionError" ? "connection" : "device", reason: err.message });
    }
    return { inputs, failures };
}


export type { DiffResult };

/**
 * Another device or host → replace (the old binding is released first); driver, persistence or group handling →
 * update in place; a member found off its driver by `refresh` → update (repair).
 */
export function diff(_id: string, olds: IommuBindingOutputs, news: IommuBindingInputs): DiffResult {
    const replaces: string[] = [];
    const n = defaults(news);
    const newAddress = news.address ?? (typeof news.device === "string" && !isUnknown(news.device) ? safeAddress(news.device) : undefined);
    if (containsUnknown(news.device) || newAddress === undefined || newAddress !== olds.address) replaces.push("device");
    if (containsUnknown(news.connection) || hostIdentity(news.connection) !== hostIdentity(olds.connection)) replaces.push("connection");
    let changes = replaces.length > 0;
    for (const k of ["driver", "wholeGroup", "allowBootVga", "persistent"] as const) if (n[k] !== (olds as any)[k]) changes = true;
    if (JSON.stringify(news.device) !== JSON.stringify(olds.device)) changes = true;
    if (JSON.stringify(news.allowHostCritical ?? []) !== JSON.stringify(olds.allowHostCritical ?? [])) changes = true;
    const drifted = (olds.members ?? []).some((m) => m.managed && m.driver !== olds.driver);
    if (drifted) changes = true;
    return { changes, replaces, deleteBeforeReplace: true };
}

function addressMessage(s: string): string {
    try {
        parseAddress(s);
        return "";
    } catch (e) {
        return (e as Error).message;
    }
}

function safeAddress(s: string): string | undefined {
    try {
        return parseAddress(s);
    } catch {
        return undefined;
    }
}

// ------------------------------------------------------------------------------------------------ apply

/** What delete restores for a member the state recorded. */
function recordedState(m: BindingMember): DeviceState {
    return m.previousProbe ? { driver: null, override: null, probe: true } : { driver: m.previousDriver, override: m.previousOverride };
}

function journaledState(e: JournalEntry): DeviceState {
    return e.probe ? { driver: null, override: null, probe: true } : { driver: e.driver, override: e.override };
}

/** What a member had before us when the state does not say: what the binding's journal on the host recorded, else
 *  its state now (or the kernel's driver matching for an override nobody recorded, see `stateBefore`). */
function hostStateBefore(d: PciDevice, view: GroupView, driver: string): DeviceState {
    const e = view.journal?.members.find((j) => j.address === d.address);
    return e ? journaledState(e) : stateBefore(d, driver, new Set(view.savedOverrides ?? []));
}

/** The plan line's word on what delete will restore, when the member's state now does not tell: an override nobody
 *  recorded, or a journal the state knows nothing of (`fromJournal`: a create killed midway, or a lost state). */
function beforeNote(m: MemberPlan, fromJournal: boolean): string {
    if (!m.managed) return "";
    if (m.previous.probe) return " (override set before us; destroy gives it back to the kernel's driver matching)";
    if (fromJournal && (m.previous.driver !== m.device.driver || m.previous.override !== m.device.override)) return ` (bound by an earlier change the state does not know, says the journal; destroy restores ${m.previous.driver ?? "no driver"})`;
    return "";
}

function toMember(m: MemberPlan, driverNow: string | null): BindingMember {
    const d = m.device;
    return {
        address: d.address,
        vendor: d.vendor,
        device: d.device,
        subsystemVendor: d.subsystemVendor,
        subsystemDevice: d.subsystemDevice,
        class: d.class,
        className: classLabel(d.class),
        previousDriver: m.previous.driver,
        previousOverride: m.previous.override,
        ...(m.previous.probe ? { previousProbe: true } : {}),
        driver: driverNow,
        managed: m.managed,
    };
}

/**
 * The driverctl files to write or remove: written for every managed member when `persistent`; removed only where
 * this binding wrote them before (`wasPersistent`, a member it managed) and no longer should. A file the host had
 * before us (the user's own `driverctl set-override`) is never touched.
 */
function persistenceOps(plan: BindingPlan, persistent: boolean, driver: string, wasPersistent: boolean, previous: BindingMember[] = []): Op[] {
    const ops: Op[] = [];
    if (persistent) ops.push({ op: "mkdir", path: DRIVERCTL_DIR, mode: 0o755 });
    for (const m of plan.members) {
        const ours = wasPersistent && previous.some((p) => p.managed && p.address === m.device.address);
        if (m.managed && persistent) ops.push({ op: "put", path: driverctlFile(m.device.address), data: driver + "\n", mode: 0o644 });
        else if (ours) ops.push({ op: "remove", path: driverctlFile(m.device.address) });
    }
    return ops;
}

interface RestoreEntry {
    address: string;
    state: DeviceState;
    now?: DeviceState;
}

/**
 * Put every member back as it was in `before`, from whatever it is now (read first unless the caller knows it),
 * with `extra` ops (persistence cleanup) in the same batch, and `last` (the journal's removal) behind guards that
 * hold only once every member is back. Returns the members that did not come back.
 */
async function restore(host: Host, before: RestoreEntry[], extra: Op[] = [], last: Op[] = []): Promise<string[]> {
    if (before.length === 0 && extra.length === 0 && last.length === 0) return [];
    const unknown = before.filter((b) => !b.now);
    if (unknown.length) {
        const r = await host.run(unknown.flatMap((b) => [driverLinkOp(b.address), { op: "read", path: `/sys/bus/pci/devices/${b.address}/driver_override` } as Op]));
        unknown.forEach((b, i) => (b.now = { driver: driverFromLink(r[2 * i]), override: overrideFrom(r[2 * i + 1]) }));
    }
    const ops: Op[] = before.flatMap((b) => restoreOps(b.address, b.now!, b.state));
    const verify = before.flatMap((b): Op[] => [driverLinkOp(b.address), { op: "read", path: `${PCI_DEVICES}/${b.address}/driver_override` }]);
    const guarded = last.length ? [...arrivedGuards(before.map((b) => ({ address: b.address, to: b.state }))), ...last] : [];
    // Only the guards may stop this batch: a restore goes as far as it can.
    const lenient = extra.map((o): Op => (o.op === "write" || o.op === "put" || o.op === "mkdir" || o.op === "remove" || o.op === "exec" ? { ...o, optional: true } : o));
    const r = await host.run([...ops, ...lenient, ...verify, ...guarded], { stopOnError: guarded.length > 0 });
    const after = r.slice(ops.length + extra.length);
    return before.flatMap((b, i) => {
        const d = driverFromLink(after[2 * i]);
        const ok = after[2 * i + 1]?.ok && reached(b.state, d, overrideFrom(after[2 * i + 1]), b.now!.driver ?? undefined);
        return ok ? [] : [`${b.address} is on ${d ?? "no driver"}, not ${b.state.probe ? "back on the kernel's choice without an override" : b.state.driver ?? "no driver"}`];
    });
}

function overrideFrom(r: { ok: boolean; data: string } | undefined): string | null {
    return r?.ok ? overrideOf(r.data) : null;
}

/**
 * Converge the host to the inputs: the body of create and update. `previous` are the members from the state
 * (so delete later restores the drivers the host had before the first create, not intermediate ones).
 *
 * A create right after check in the same program (as `pulumi up` does) plans from what check read, and its one
 * batch verifies before the first write that the group is still as read (the guards of `lastGroupView`); when a guard stops
 * it (nothing was written), or the group was not read yet, or this is an update, the group is read under the lock
 * and the plan made from that.
 */
async function converge(host: Host, inputs: IommuBindingInputs, previous?: BindingMember[], wasPersistent = false): Promise<IommuBindingOutputs> {
    assertDriverName(defaults(inputs).driver);
    return host.withLock(async (host) => {
        const address = await resolveAddress(host, inputs.device);
        const seen = previous ? undefined : lastGroupView(host, address);
        if (seen?.view.device) {
            // Who holds the group is the guard's to tell; the driver list decides whether to modprobe.
            const facts: PlanFacts = { view: { ...seen.view, openers: [] }, driverKnown: true, driverctlInstalled: true };
            const outs = await apply(host, inputs, address, facts, { previous, wasPersistent }, seen.guards);
            if (outs) return outs;
        }
        const facts = await readFacts(host, address, defaults(inputs).driver, previous, false);
        return (await apply(host, inputs, address, facts, { previous, wasPersistent }, []))!;
    });
}

/**
 * Bind as `facts` say the group is, in one `stopOnError` batch: `guards` first, then the journal of what every
 * member had before the binding (see sysfs/journal.ts), modprobe if the driver is not registered, driverctl's
 * sequence per changing member, the read-back of every member and the persistence files. Returns undefined when a
 * guard stopped the batch (or the plan from guarded facts has problems): nothing changed. On a failed write, every
 * member already changed is restored and the error thrown names the file and errno. A journal found (a change killed
 * midway, or a binding the state lost) is adopted by the plan and kept, rewritten when anything changes.
 */
async function apply(
    host: Host,
    inputs: IommuBindingInputs,
    address: string,
    facts: PlanFacts,
    { previous, wasPersistent }: { previous?: BindingMember[]; wasPersistent: boolean },
    guards: Op[],
): Promise<IommuBindingOutputs | undefined> {
    const { driver, wholeGroup, allowBootVga, persistent } = defaults(inputs);
    const plan = planBinding({ ...inputs, address }, facts);
    if (plan.problems.length) {
        if (guards.length) return undefined;
        throw new PlanError(plan.problems[0].property, plan.problems.map((p) => p.reason).join("; "));
    }

    const changing = plan.members.filter((m) => m.target !== null && (m.target !== m.device.driver || (m.target === driver && m.device.override !== driver)));
    // Every member this change decides (managed ones, and ones it gives back), each with what it had before us.
    const decided = plan.members.filter((m) => m.target !== null);
    const hadJournal = !!facts.view.journal;
    const record = changing.length ? journalOf(address, decided.map((m) => ({ address: m.device.address, ...m.previous }))) : undefined;
    const ops: Op[] = [];
    if (record) ops.push(...writeJournalOps(address, record.text));
    if (!facts.view.drivers.includes(driver)) ops.push({ op: "exec", argv: ["modprobe", moduleOf(driver)] });
    for (const m of changing) {
        ops.push(...(m.target === driver ? bindOps(m.device.address, m.device, driver) : restoreOps(m.device.address, m.device, m.previous)));
    }
    const applyCount = ops.length;
    ops.push(...plan.members.map((m) => driverLinkOp(m.device.address)));
    ops.push(...persistenceOps(plan, persistent, driver, wasPersistent, previous));

    const all = await host.run([...guards, ...ops], { stopOnError: true });
    if (all.slice(0, guards.length).some((x) => !x.ok)) return undefined;
    const r = all.slice(guards.length);
    let failure: Error | undefined = firstFailure(ops, r);
    const now = new Map(plan.members.map((m, i) => [m.device.address, driverFromLink(r[applyCount + i])]));

    if (!failure) {
        // drivers_probe can leave a device unbound (lxd#12128): try an explicit bind once before giving up.
        const stray = changing.filter((m) => m.target === driver && now.get(m.device.address) !== driver);
        if (stray.length) {
            const retry: Op[] = stray.map((m): Op => ({ op: "write", path: `${PCI_DRIVERS}/${driver}/bind`, data: m.device.address, optional: true }));
            const rr = await host.run([...retry, ...stray.map((m) => driverLinkOp(m.device.address))]);
            stray.forEach((m, i) => now.set(m.device.address, driverFromLink(rr[retry.length + i])));
            const still = stray.filter((m) => now.get(m.device.address) !== driver);
            if (still.length) {
                const why = rr.slice(0, retry.length).find((x) => !x.ok);
                failure = new SysfsError(
                    `${PCI_DRIVERS}/${driver}/bind`,
                    why?.errno,
                    `${still.map((m) => m.device.address).join(", ")} did not bind to ${driver} (driver link reads ${still.map((m) => now.get(m.device.address) ?? "nothing").join(", ")})`,
                    "another driver may have claimed it first, or the driver refused it; check dmesg",
                );
            }
        }
        const wrong = changing.filter((m) => m.target !== driver && !reached(m.previous, now.get(m.device.address) ?? null, null) && !m.previous.probe);
        if (!failure && wrong.length) {
            failure = new Error(`${wrong.map((m) => `${m.device.address} did not return to ${m.target}`).join(", ")}`);
        }
    }

    if (failure) {
        noteMemberStates(host, address, undefined);
        const undo = changing.map((m) => ({ address: m.device.address, state: { driver: m.device.driver, override: m.device.override } }));
        // Back where this change found the group: the journal goes too, unless it was there before (the binding's
        // record, or a change killed earlier: the host's own drivers are still needed); one not back keeps it.
        const left = await restore(host, undo, [], record && !hadJournal ? [dropJournalOp(address)] : []);
        // Persistence files are restored too: remove what we wrote for members that had none.
        const restoredNote = left.length ? ` Rollback incomplete: ${left.join("; ")}.` : ` Every changed device was restored (${undo.map((u) => `${u.address} → ${u.state.driver ?? "no driver"}`).join(", ") || "nothing had changed"}).`;
        if (persistent) await host.run(plan.members.filter((m) => m.managed && !(previous ?? []).some((p) => p.address === m.device.address)).map((m): Op => ({ op: "remove", path: driverctlFile(m.device.address) })));
        throw new Error(`binding ${address} to ${driver} failed: ${failure.message}.${restoredNote}`);
    }

    // Every override write succeeded (a failed one stops the batch), so each member's override is the one written.
    const overrideNow = (m: MemberPlan) => (!changing.includes(m) ? m.device.override : m.target === driver ? driver : m.previous.override);
    const states = new Map(plan.members.map((m) => [m.device.address, { driver: now.get(m.device.address) ?? null, override: overrideNow(m) }]));
    const kept = record ?? (facts.view.journal ? journalOf(address, facts.view.journal.members) : undefined);
    noteMemberStates(host, address, states, driver, kept);
    return {
        ...withoutProvider(inputs),
        address,
        driver,
        wholeGroup,
        allowBootVga,
        persistent,
        group: plan.group!,
        vfioDevice: isVfioDriver(driver) ? `/dev/vfio/${plan.group}` : null,
        members: plan.members.map((m) => toMember(m, now.get(m.device.address) ?? null)),
        plan: plan.lines,
    };
}

export async function create(inputs: IommuBindingInputs, onHost?: Host): Promise<{ id: string; outs: IommuBindingOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: outs.address, outs };
}

export async function update(_id: string, olds: IommuBindingOutputs, news: IommuBindingInputs, onHost?: Host): Promise<{ outs: IommuBindingOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, news, olds.members, olds.persistent), onHost);
    return { outs };
}

/**
 * The host's truth. A vanished device → id "" (gone); members' current drivers → drift the next `up` repairs. A
 * journal left by a change killed midway is adopted: its record of what each member had before is what delete
 * will restore.
 */
export async function read(id: string, props: IommuBindingOutputs, onHost?: Host): Promise<{ id: string; props?: IommuBindingOutputs }> {
    return withHost(props.connection, async (host) => {
        const view = await readGroup(host, props.address ?? id);
        if (!view.device) return { id: "" };
        const byAddr = new Map(view.members.map((d) => [d.address, d]));
        const journal = new Map((view.journal?.members ?? []).map((e) => [e.address, e]));
        const members = (props.members ?? [])
            .filter((m) => byAddr.has(m.address))
            .map((m) => {
                const e = journal.get(m.address);
                const { previousProbe: _, ...rest } = m;
                const before = e ? { previousDriver: e.driver, previousOverride: e.override, ...(e.probe ? { previousProbe: true } : {}) } : m.previousProbe ? { previousProbe: true } : {};
                return { ...rest, ...before, driver: byAddr.get(m.address)!.driver };
            });
        return { id, props: { ...props, group: view.group ?? props.group, members } };
    }, onHost);
}

/** The refusal of a release while processes hold the group open. */
async function heldError(host: Host, group: number | null, pids: number[]): Promise<Error> {
    const who = await describeHolders(host, pids);
    return new Error(`refusing to release IOMMU group ${group}: /dev/vfio/${group} is held open by ${who}. Stop the VM first; unbinding now would block in the kernel until it exits`);
}

/**
 * Release the group: refuse while a VM holds it; otherwise restore every managed member and remove persistence.
 * First in one batch, from the state the last create or refresh recorded, behind a guard that stops it while the
 * group is held; the binding's journal is removed at its end, behind guards that hold only once every member is
 * back (a delete killed midway leaves it, and the next delete or read adopts it). When the read-back shows a member
 * not back as it was (drift, a refused write, a device gone, a crash's leftovers), the real state and the journal are
 * read and the group restored from them (the journal's record of the host's own drivers wins over the state's).
 */
export async function remove(_id: string, props: IommuBindingOutputs, onHost?: Host): Promise<void> {
    await withHost(props.connection, (host) =>
        host.withLock(async (host) => {
            const members = props.members ?? [];
            const recorded = members
                .filter((m) => m.managed)
                .map((m) => ({ address: m.address, state: recordedState(m), now: { driver: m.driver, override: props.driver } }));
            const guard: Op = { op: "groupHolders", path: `${PCI_DEVICES}/${props.address}`, guard: true };
            const ops = recorded.flatMap((b) => restoreOps(b.address, b.now, b.state));
            // Only files this binding wrote: a driverctl file the host had before us stays.
            const cleanup = props.persistent ? recorded.map((b): Op => ({ op: "remove", path: driverctlFile(b.address), optional: true })) : [];
            const verify = recorded.flatMap((b): Op[] => [driverLinkOp(b.address), { op: "read", path: `${PCI_DEVICES}/${b.address}/driver_override` }]);
            const done = [...arrivedGuards(recorded.map((b) => ({ address: b.address, to: b.state }))), dropJournalOp(props.address)];
            const r = await host.run([guard, ...ops, ...cleanup, ...verify, ...done], { stopOnError: true });
            if (!r[0].ok && r[0].errno === "EBUSY") {
                const group = /\/dev\/vfio\/(\d+)/.exec(r[0].message ?? "")?.[1];
                throw await heldError(host, group === undefined ? props.group : Number(group), pidsOf(r[0]));
            }
            if (r[r.length - 1].ok) {
                // Every member back (the guards before the removal held).
                const after = r.slice(1 + ops.length + cleanup.length);
                return noteMemberStates(host, props.address, new Map(recorded.map((b, i) => [b.address, { driver: driverFromLink(after[2 * i]), override: overrideFrom(after[2 * i + 1]) }])));
            }
            noteMemberStates(host, props.address, undefined);

            const view = await readGroupState(host, props.address, members.map((m) => m.address), [readJournalOp(props.address)]);
            const found = parseJournal(props.address, view.extra[0]).journal;
            if (!view.exists) return;
            if (view.openers.length) throw await heldError(host, view.group, view.openers);
            const entries = new Map((found?.members ?? []).map((e) => [e.address, e]));
            const undo = members
                .filter((m) => (m.managed || entries.has(m.address)) && view.members.get(m.address))
                .map((m) => ({ address: m.address, state: entries.has(m.address) ? journaledState(entries.get(m.address)!) : recordedState(m), now: view.members.get(m.address)! }));
            // The group was just read: restore from that state, drop persistence in the same batch, and the journal
            // once every member is back.
            const left = await restore(host, undo, props.persistent ? undo.map((u): Op => ({ op: "remove", path: driverctlFile(u.address) })) : [], [dropJournalOp(props.address)]);
            if (left.length) throw new Error(`releasing ${props.address}: ${left.join("; ")}. Check dmesg; \`pulumi destroy\` can be run again`);
        }),
        onHost,
    );
}

export const iommuBinding = { check, diff, create, read, update, delete: remove };
