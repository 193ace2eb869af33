/**
 * IommuBinding: what happens on `pulumi preview` / `up` / `refresh` / `destroy` for "this device and its IOMMU
 * group belong to vfio-pci". Read it top to bottom: each function reads the host (sysfs/iommu.ts `readGroup`),
 * plans (binding/plan.ts, pure) and applies (binding/apply.ts).
 *
 * - check: validate the inputs, then read the host (nothing changes) and resolve the device, refuse what would
 *   break (bridge, boot VGA, a host-critical member such as the chipset's LPC/SMBus or the disk the host runs from,
 *   unknown driver, a group left non-viable, IOMMU off), and list the planned per-device driver changes in `plan`,
 *   which `pulumi preview` shows.
 * - create/update: under the host lock, plan the change (journal, modprobe if needed, driverctl's sequence per
 *   member) and run it in one batch (right after check, planned from what check read and guarded, see `converge`);
 *   read every `driver` link back; on any failure restore every member to exactly its previous driver and override,
 *   then fail with the file, errno and a hint.
 * - read: the real state; the device gone → resource gone; a member off the driver → drift for `up` to repair.
 * - delete: refuse while a process holds /dev/vfio/<group> (the kernel would block forever); otherwise restore
 *   previous drivers and remove the persistence files it wrote.
 *
 * Each function takes an optional last `onHost`: the dynamic provider passes none (the host comes from
 * `connection`); tests pass a fake or the lab's kernel.
 */
import { CheckResult, DiffResult, containsUnknown, isUnknown, validate, withoutProvider } from "./check";
import { PlanError } from "./errors";
import { hostIdentity } from "./host/ssh";
import { Host, Op } from "./host/types";
import { observations, withHost } from "./host";
import { checkOnHost } from "./checkOnHost";
import { GroupObservation, afterChange, groupGuards, isVfioDriver, readGroup, readGroupState } from "./sysfs/iommu";
import { assertDriverName, isAddress, PCI_DEVICES, parseAddress } from "./sysfs/pci";
import { DeviceSelector, resolveSelector, scanHost } from "./sysfs/scan";
import { criticalReadOps, linkOps, parseCriticalReads, traceUses } from "./sysfs/critical";
import { DRIVERCTL_DIR, driverctlFile, dropJournalOp, parseJournal, readJournalOp } from "./sysfs/journal";
import { BindingChange, PlanFacts, planBinding, planChange, planRelease, planRestoreFromHost, toMember } from "./binding/plan";
import { BindingMember, IommuBindingInputs, IommuBindingOutputs, defaults } from "./binding/types";
import { Applied, Stale, applyChange, applyGuarded, applyRelease, heldError, restore } from "./binding/apply";
import { ConsoleRecord, consoleReadBack, consoleRestoreOps, disarmDeadManOps, dropConsoleJournalOp, readConsole } from "./console/handover";
import { BatchQuery } from "./host/query";

export type { BindingMember, IommuBindingInputs, IommuBindingOutputs } from "./binding/types";
export { bridgeMessage, planBinding } from "./binding/plan";
export type { BindingPlan, MemberPlan, PlanFacts } from "./binding/plan";
export { DRIVERCTL_DIR, driverctlFile };
const DRIVERCTL_BINARIES = ["/usr/sbin/driverctl", "/usr/bin/driverctl"];

// ------------------------------------------------------------------------------------------------ host facts

/** What this program last read of each device's group on a host (kept by the host pool, see host/index.ts). */
export const groupObservations = (host: Host) => observations<GroupObservation>(host, "iommu-group");

/** Keep `o` as the last observation of `address`'s group (undefined: the device is gone, forget it). */
function keep(host: Host, address: string, o: GroupObservation | undefined): void {
    if (o) groupObservations(host).set(address, o);
    else groupObservations(host).delete(address);
}

/**
 * The host facts a plan needs. `probe` asks modprobe whether an unregistered driver exists and looks for driverctl
 * (check does; create/update need not: modprobe itself fails clearly, and check already vetted persistence). Both
 * start processes, which on a busy host cost more than the rest of the batch.
 */
async function readFacts(host: Host, address: string, driver: string, previous?: BindingMember[], probe = true, consoleUnit?: string): Promise<PlanFacts> {
    const seen = groupObservations(host).get(address);
    // consoleHandover: what holds the console rides on the group's first batch.
    const console = (q: BatchQuery) => (consoleUnit ? readConsole(q, consoleUnit, address) : () => undefined);
    // check (probe) shows the whole picture; create and update, under the lock, read only what binding needs.
    if (!probe) {
        const view = await readGroup(host, address, seen, { view: "binding", extra: console });
        keep(host, address, view.observation);
        return { view, driverKnown: true, driverctlInstalled: true, previous, ...(view.extra ? { console: view.extra } : {}) };
    }
    // The host's uses (mounts, swap, SSH session) ride on the group's two batches: names in the first, the sysfs
    // links they lead to in the second; only a stacked device (dm, md) costs a further round trip per level.
    const view = await readGroup(host, address, seen, {
        extra: (q) => {
            const modprobe = q.one({ op: "exec", argv: ["modprobe", "-n", "-q", driver] }, (r) => r.ok);
            const driverctl = q.add(DRIVERCTL_BINARIES.map((p): Op => ({ op: "stat", path: p })), (r) => r.some((x) => x.ok));
            const behind = q.one({ op: "list", path: `${PCI_DEVICES}/${address}` }, (r) => (r.ok ? r.data.split("\n").filter(isAddress).sort() : undefined));
            const critical = q.add(criticalReadOps(), parseCriticalReads);
            const consoleFacts = console(q);
            return (r) => ({ modprobe: modprobe(r), driverctl: driverctl(r), behind: behind(r), critical: critical(r), console: consoleFacts(r) });
        },
        then: (extra, q) => q.add(linkOps(extra.critical.uses), (r) => r),
    });
    keep(host, address, view.observation);
    return {
        view,
        driverKnown: view.drivers.includes(driver) || view.extra.modprobe,
        driverctlInstalled: view.extra.driverctl,
        previous,
        uses: await traceUses(host, view.extra.critical, view.then),
        behind: view.extra.behind,
        ...(view.extra.console ? { console: view.extra.console } : {}),
    };
}

/** The display manager unit whose state the facts need: only with consoleHandover. */
const consoleUnitOf = (inputs: IommuBindingInputs) => (defaults(inputs).consoleHandover ? defaults(inputs).displayManager : undefined);

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
    failures.push(
        ...(await checkOnHost(
            inputs.connection,
            onHost,
            async (host) => {
                assertDriverName(defaults(inputs).driver);
                const address = await resolveAddress(host, inputs.device);
                const previous = (olds?.members as BindingMember[] | undefined) ?? undefined;
                const facts = await readFacts(host, address, defaults(inputs).driver, olds?.address === address ? previous : undefined, true, consoleUnitOf(inputs));
                const plan = planBinding({ ...inputs, address }, facts);
                inputs.address = address;
                inputs.plan = plan.lines;
                return plan.problems;
            },
            "device",
        )),
    );
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
    for (const k of ["resetMethod", "resetOnRelease"] as const) if (news[k] !== olds[k]) changes = true;
    const o = defaults(olds);
    for (const k of ["consoleHandover", "displayManager", "deadManSeconds"] as const) if (n[k] !== o[k]) changes = true;
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

// ------------------------------------------------------------------------------------------------ create / update

/**
 * Converge the host to the inputs: the body of create and update. `previous` are the members from the state
 * (so delete later restores the drivers the host had before the first create, not intermediate ones).
 *
 * A create right after check in the same program (as `pulumi up` does) plans from what check read, and its one
 * batch verifies before the first write that the group is still as read (`groupGuards` of the observation the host pool kept); when a guard
 * stops it (nothing was written), or that plan has problems, or the group was not read yet, or this is an update, the
 * group is read under the lock and the change planned from that.
 */
async function converge(host: Host, inputs: IommuBindingInputs, previous?: BindingMember[], wasPersistent = false, resetMethodBefore?: string, consoleBefore?: ConsoleRecord): Promise<IommuBindingOutputs> {
    const { driver } = defaults(inputs);
    assertDriverName(driver);
    return host.withLock(async (host) => {
        const address = await resolveAddress(host, inputs.device);
        const context = { previous, wasPersistent, resetMethodBefore, consoleBefore };
        // A console handover plans from the console as it is under the lock: no plan from check's read.
        const consoleUnit = consoleUnitOf(inputs);
        const seen = previous || consoleUnit ? undefined : groupObservations(host).get(address)?.seen;
        if (seen?.view.device) {
            // Who holds the group is the guard's to tell; the driver list decides whether to modprobe.
            const change = planChange({ ...inputs, address }, { view: { ...seen.view, openers: [] }, driverKnown: true, driverctlInstalled: true }, context);
            if (!change.problems.length) {
                const done = await noted(host, address, change, () => applyGuarded(host, address, change, groupGuards(address, seen)));
                if (done.kind === "applied") return outputsOf(inputs, address, change, done.drivers);
            }
        }
        const facts = await readFacts(host, address, driver, previous, false, consoleUnit);
        const change = planChange({ ...inputs, address }, facts, context);
        if (change.problems.length) throw new PlanError(change.problems[0].property, change.problems.map((p) => p.reason).join("; "));
        const done = await noted(host, address, change, () => applyChange(host, address, change));
        return outputsOf(inputs, address, change, done.drivers);
    });
}

/** Run `apply` and keep what it left the group with as the observation the next change plans from (a failure: what
 *  the host has is unknown, only the member hint is kept). */
async function noted<R extends Applied | Stale>(host: Host, address: string, change: BindingChange, apply: () => Promise<R>): Promise<R> {
    const before = groupObservations(host).get(address);
    let done: R;
    try {
        done = await apply();
    } catch (e) {
        keep(host, address, afterChange(before, address, undefined));
        throw e;
    }
    if (done.kind === "applied") keep(host, address, afterChange(before, address, done.states, change.driver, change.kept));
    return done;
}

function outputsOf(inputs: IommuBindingInputs, address: string, change: BindingChange, drivers: Map<string, string | null>): IommuBindingOutputs {
    const { driver, wholeGroup, allowBootVga, persistent } = defaults(inputs);
    return {
        ...withoutProvider(inputs),
        address,
        driver,
        wholeGroup,
        allowBootVga,
        persistent,
        group: change.group!,
        vfioDevice: isVfioDriver(driver) ? `/dev/vfio/${change.group}` : null,
        members: change.members.map((m) => toMember(m, drivers.get(m.device.address) ?? null)),
        plan: change.lines,
        ...(change.resetMethod ? { resetMethodBefore: change.resetMethod.before } : {}),
        ...(change.console ? { console: change.console } : {}),
    };
}

export async function create(inputs: IommuBindingInputs, onHost?: Host): Promise<{ id: string; outs: IommuBindingOutputs }> {
    const outs = await withHost(inputs.connection, (host) => converge(host, inputs), onHost);
    return { id: outs.address, outs };
}

export async function update(_id: string, olds: IommuBindingOutputs, news: IommuBindingInputs, onHost?: Host): Promise<{ outs: IommuBindingOutputs }> {
    const outs = await withHost(news.connection, (host) => converge(host, news, olds.members, olds.persistent, olds.resetMethodBefore, olds.console), onHost);
    return { outs };
}

// ------------------------------------------------------------------------------------------------ read / delete

/**
 * The host's truth. A vanished device → id "" (gone); members' current drivers → drift the next `up` repairs. A
 * journal left by a change killed midway is adopted: its record of what each member had before is what delete
 * will restore.
 */
export async function read(id: string, props: IommuBindingOutputs, onHost?: Host): Promise<{ id: string; props?: IommuBindingOutputs }> {
    return withHost(props.connection, async (host) => {
        const address = props.address ?? id;
        const view = await readGroup(host, address, groupObservations(host).get(address));
        keep(host, address, view.observation);
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
            const first = await applyRelease(host, planRelease(props), props.group, props.driver);
            const before = groupObservations(host).get(props.address);
            keep(host, props.address, afterChange(before, props.address, first.kind === "released" ? first.states : undefined));
            if (first.kind === "released") {
                if (first.console.length) throw consoleNotBack(props, first.console);
                return;
            }
            // The group stays bound (the state keeps the resource): the error says what was done and what not.
            if (first.kind === "resetFailed") throw first.error;

            const members = props.members ?? [];
            const view = await readGroupState(host, props.address, members.map((m) => m.address), (q) => q.one(readJournalOp(props.address), (r) => parseJournal(props.address, r).journal));
            const found = view.extra;
            if (!view.exists) return;
            if (view.openers.length) throw await heldError(host, view.group, view.openers);
            const undo = planRestoreFromHost(members, view.members, found);
            // The group was just read: restore from that state, drop persistence and give the console back in the
            // same batch, and the journal once every member is back.
            const extra = [
                ...(props.persistent ? undo.map((u): Op => ({ op: "remove", path: driverctlFile(u.address) })) : []),
                ...(props.console ? [...(props.console.deadMan ? disarmDeadManOps(props.group) : []), ...consoleRestoreOps(props.console)] : []),
            ];
            const left = await restore(host, undo, extra, [dropJournalOp(props.address), ...(props.console ? [dropConsoleJournalOp(props.address)] : [])]);
            if (left.length) throw new Error(`releasing ${props.address}: ${left.join("; ")}. Check dmesg; \`pulumi destroy\` can be run again`);
            if (props.console) {
                const q = new BatchQuery();
                const notBack = consoleReadBack(q, props.console);
                const problems = notBack(await q.run(host));
                if (problems.length) throw consoleNotBack(props, problems);
            }
        }),
        onHost,
    );
}

/** A release whose members are back but whose console is not: what is missing and how to get it back by hand. */
function consoleNotBack(props: IommuBindingOutputs, problems: string[]): Error {
    const c = props.console!;
    const byHand = [...c.vtconsoles.map((id) => `echo 1 > /sys/class/vtconsole/${id}/bind`), ...(c.displayManagerStopped ? [`systemctl start ${c.displayManagerStopped}`] : [])];
    return new Error(
        `released IOMMU group ${props.group} (${props.address}): every member is back on its host driver, but the console is not: ${problems.join("; ")}. ` +
            `By hand: ${byHand.join("; ") || "check dmesg"}; \`pulumi destroy\` again retries the console steps`,
    );
}

export const iommuBinding = { check, diff, create, read, update, delete: remove };
