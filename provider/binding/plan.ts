/**
 * Planning an IommuBinding: pure functions from the inputs and what was read ({@link PlanFacts}, see
 * sysfs/iommu.ts `readGroup`) to what a change does. {@link planBinding} decides each member's driver, the problems
 * and the preview lines; {@link planChange} turns that into the change's ordered writes, its read-back and its
 * rollback; {@link planRelease} does the same for delete. Nothing here touches a host: binding/apply.ts runs the
 * plans, so the same decisions serve check, create, update, delete and the unit tests.
 */
import type { CheckFailure } from "../check";
import { Op } from "../host/types";
import { HostUses, hostCriticalReason } from "../sysfs/critical";
import { GroupView, IOMMU_OFF_FIX, isVfioDriver, viabilityProblems } from "../sysfs/iommu";
import { DRIVERCTL_DIR, Journal, JournalEntry, arrivedGuards, driverctlFile, dropJournalOp, journalOf, stateBefore, writeJournalOps } from "../sysfs/journal";
import { DeviceState, PCI_DEVICES, PciDevice, bindSequence, classLabel, driverLinkOp, isBridge, moduleOf, restoreSequence } from "../sysfs/pci";
import { BindingMember, IommuBindingInputs, IommuBindingOutputs, defaults } from "./types";
import { ResetMethodChange, isResetWrite, planResetMethod, planResets, releaseResetOps, resetLine, unsetResetMethodOps } from "../reset/plan";
import { ConsoleFacts, ConsoleRecord, DEADMAN_LOCK_SECONDS, HandoverPlan, armDeadManOps, consoleRestoreOps, deadManLine, disarmDeadManOps, dropConsoleJournalOp, planHandover, releaseLine } from "../console/handover";
import { BATCH_SCRIPT, batchFileText } from "../host/batch";

// ------------------------------------------------------------------------------------------------ decisions

export interface MemberPlan {
    device: PciDevice;
    /** The driver the member will have; null = leave it as it is. */
    target: string | null;
    /** What delete restores. */
    previous: DeviceState;
    managed: boolean;
    /** The reset method destroy uses on it (reset/plan.ts), when it gets one. */
    resetOnRelease?: string;
}

export interface BindingPlan {
    group: number | null;
    members: MemberPlan[];
    problems: CheckFailure[];
    /** Human lines for the preview: `0000:01:00.1 (Audio device 8086:2668): snd_hda_intel → vfio-pci`. */
    lines: string[];
    /** consoleHandover's steps, when this change moves a display function off its host driver. */
    handover?: HandoverPlan;
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
    /** The state's `resetMethodBefore` (the device's `reset_method` before the binding first set it). */
    resetMethodBefore?: string;
    /** What holds the host's console (read only with consoleHandover, see console/handover.ts). */
    console?: ConsoleFacts;
    /** The state's `console`: what an earlier handover of this binding took. */
    consoleBefore?: ConsoleRecord;
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

    // Resets: what the kernel can do for each managed function when a VM lets go of it, and what destroy will do.
    const managedDevices = members.filter((m) => m.managed).map((m) => m.device);
    const { resets, problems: resetProblems } = planResets(managedDevices, address, inputs, view.resetContext);
    problems.push(...resetProblems);
    for (const m of members) {
        const r = resets.get(m.device.address);
        if (!r) continue;
        if (r.onRelease) m.resetOnRelease = r.onRelease;
        lines.push(resetLine(m.device, r, m.previous.driver));
    }
    if (inputs.resetMethod !== undefined && view.device && !isBridge(view.device)) lines.push(planResetMethod(view.device, inputs.resetMethod, facts.resetMethodBefore).line);
    const handover = planConsole({ ...inputs, address }, { group: view.group, members, driver }, facts.console, facts.consoleBefore);
    problems.push(...handover.problems);
    lines.push(...handover.lines);
    return { group: view.group, members, problems, lines, ...(handover.plan ? { handover: handover.plan } : {}) };
}

/** The display functions (class 03xx) a change moves onto the binding's driver: what a console handover frees. */
function displaysLeaving(members: MemberPlan[], driver: string): MemberPlan[] {
    return members.filter((m) => m.managed && m.target === driver && m.device.driver !== driver && m.device.class.startsWith("03"));
}

/**
 * consoleHandover's problems and preview lines, and its steps when this change moves a display function off its
 * host driver (see console/handover.ts). Without the console facts (not read: consoleHandover off) nothing.
 */
function planConsole(
    inputs: IommuBindingInputs,
    { group, members, driver }: { group: number | null; members: MemberPlan[]; driver: string },
    facts: ConsoleFacts | undefined,
    earlier?: ConsoleRecord,
): { problems: CheckFailure[]; lines: string[]; plan?: HandoverPlan } {
    const { consoleHandover, allowBootVga, deadManSeconds } = defaults(inputs);
    if (!consoleHandover || group === null) return { problems: [], lines: [] };
    const problems: CheckFailure[] = [];
    if (!allowBootVga) problems.push({ property: "consoleHandover", reason: "consoleHandover hands the host's console GPU to the VM: it needs allowBootVga: true as well (or set consoleHandover: false)" });
    const displays = members.filter((m) => m.managed && m.device.class.startsWith("03"));
    if (!displays.length) {
        problems.push({ property: "consoleHandover", reason: `IOMMU group ${group} has no display controller (class 03xx) to hand the console over with; set consoleHandover: false` });
        return { problems, lines: [] };
    }
    if (facts && deadManSeconds > 0 && !facts.systemdRun) {
        problems.push({ property: "deadManSeconds", reason: "the dead-man timer needs systemd-run on the host (systemd); install systemd, or set deadManSeconds: 0 to hand the console over without one" });
    }
    const leaving = displaysLeaving(members, driver);
    if (!facts || !leaving.length) return { problems, lines: leaving.length ? [] : [`console handover: ${displays.map((m) => m.device.address).join(", ")} already on ${driver}, nothing to hand over now`] };
    const gpu = leaving.map((m) => m.device.address).join(", ");
    const plan = planHandover(facts, gpu, inputs.address!, earlier);
    if (deadManSeconds > 0) plan.record.deadMan = { unit: `pulumi-vfio-deadman-${group}`, seconds: deadManSeconds };
    const hostDriver = [...new Set(leaving.map((m) => m.previous.driver ?? "its host driver"))].join(", ");
    const lines = [...plan.lines, releaseLine(plan.record, gpu, hostDriver)];
    if (plan.record.deadMan) lines.push(deadManLine(group, deadManSeconds));
    return { problems, lines, plan };
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

/** What delete restores for a member the state recorded. */
export function recordedState(m: BindingMember): DeviceState {
    return m.previousProbe ? { driver: null, override: null, probe: true } : { driver: m.previousDriver, override: m.previousOverride };
}

export function journaledState(e: JournalEntry): DeviceState {
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

export function toMember(m: MemberPlan, driverNow: string | null): BindingMember {
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
        ...(m.resetOnRelease ? { resetOnRelease: m.resetOnRelease } : {}),
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

// ------------------------------------------------------------------------------------------------ a change

/** A member on its way back, for a rollback or a release: what it goes back to (`state`) from what it is `now`
 *  (unknown: read first). */
export interface RestoreEntry {
    address: string;
    state: DeviceState;
    now?: DeviceState;
}

/** What create and update write, planned from the inputs and the group as read: {@link planChange}. */
export interface BindingChange extends BindingPlan {
    driver: string;
    /** The members whose driver or override this change writes. */
    changing: MemberPlan[];
    /**
     * The writes, in order, for one `stopOnError` batch after the caller's guards: the journal first (before any
     * write, see sysfs/journal.ts), modprobe when the driver is not registered, then each changing member's
     * sequence (see {@link memberOps}).
     */
    ops: Op[];
    /** Read in the same batch after `ops`: every member's `driver` link, in the order of `members`. */
    readBack: Op[];
    /** The driverctl files, last in the batch. */
    persistence: Op[];
    /**
     * What undoes the change after a failed write or a member that did not arrive: every changing member back to
     * what this change found it on; the journal goes too (behind guards that every member is back) unless it was
     * there before (the binding's record, or a change killed earlier); and the driverctl files written for members
     * that had none.
     */
    rollback: { members: RestoreEntry[]; last: Op[]; files: Op[] };
    /** The journal the binding has once the change succeeded (written now, or found and kept). */
    kept?: { journal: Journal; text: string };
    /** `resetMethod`'s change of the named device's `reset_method`, when set. */
    resetMethod?: ResetMethodChange;
    /** What the binding has done to the host's console once the change succeeded (this change's handover, or the
     *  state's), for the outputs' `console`. */
    console?: ConsoleRecord;
}

/**
 * One changing member's sequence: off the driver it is on (`leave`), onto its target (`enter`; driverctl's
 * `set-override` for the binding's driver, an explicit bind to what it had before us for a member given back). A
 * step that needs the device on no driver (a function reset, a console handed over) goes between `leave` and
 * `enter` here.
 */
export function memberOps(m: MemberPlan, driver: string): Op[] {
    const s = m.target === driver ? bindSequence(m.device.address, m.device, driver) : restoreSequence(m.device.address, m.device, m.previous);
    return [...s.leave, ...s.enter];
}

/**
 * The change that converges the group to the inputs: {@link planBinding}'s decisions, then the batch's steps in
 * order. `previous` are the members from the state (so delete restores the drivers the host had before the first
 * create, not intermediate ones); `wasPersistent` whether the state's binding wrote driverctl files.
 */
export function planChange(
    inputs: IommuBindingInputs & { address: string },
    facts: PlanFacts,
    { previous, wasPersistent, resetMethodBefore, consoleBefore }: { previous?: BindingMember[]; wasPersistent: boolean; resetMethodBefore?: string; consoleBefore?: ConsoleRecord },
): BindingChange {
    const { driver, persistent } = defaults(inputs);
    const address = inputs.address;
    const plan = planBinding(inputs, { ...facts, resetMethodBefore, consoleBefore });
    const device = facts.view.device;
    const resetMethod = inputs.resetMethod !== undefined && device ? planResetMethod(device, inputs.resetMethod, resetMethodBefore) : undefined;
    // An update that drops resetMethod gives the device its list from before the binding back.
    const unsetReset = inputs.resetMethod === undefined && resetMethodBefore !== undefined ? unsetResetMethodOps(address, resetMethodBefore) : [];
    const changing = plan.members.filter((m) => m.target !== null && (m.target !== m.device.driver || (m.target === driver && m.device.override !== driver)));
    // Every member this change decides (managed ones, and ones it gives back), each with what it had before us.
    const decided = plan.members.filter((m) => m.target !== null);
    const hadJournal = !!facts.view.journal;
    const record = changing.length ? journalOf(address, decided.map((m) => ({ address: m.device.address, ...m.previous }))) : undefined;

    const ops: Op[] = [];
    if (record) ops.push(...writeJournalOps(address, record.text));
    // Before any driver moves: the kernel refuses a method the device does not support (EINVAL) here, nothing changed.
    if (resetMethod) ops.push(...resetMethod.write);
    if (!facts.view.drivers.includes(driver)) ops.push({ op: "exec", argv: ["modprobe", moduleOf(driver)] });
    // consoleHandover: the display manager, the framebuffer consoles and the boot framebuffer let go of the GPU
    // before any member leaves its driver. The dead-man is armed first: a provider killed half-way through the
    // handover leaves the host a way back.
    const handover = plan.handover;
    const deadMan = handover?.record.deadMan && plan.group !== null ? armDeadManOps(plan.group, handover.record.deadMan.seconds, BATCH_SCRIPT, deadManRelease(address, driver, plan.members, handover.record), (o) => batchFileText(o, { stopOnError: true, lockSeconds: DEADMAN_LOCK_SECONDS })) : [];
    if (handover) ops.push(...deadMan, ...handover.before);
    for (const m of changing) ops.push(...memberOps(m, driver));
    const console = handover ? handover.record : consoleBefore;

    const rollback = {
        members: changing.map((m) => ({ address: m.device.address, state: { driver: m.device.driver, override: m.device.override } })),
        last: record && !hadJournal ? [dropJournalOp(address)] : [],
        files: [
            ...(persistent ? plan.members.filter((m) => m.managed && !(previous ?? []).some((p) => p.address === m.device.address)).map((m): Op => ({ op: "remove", path: driverctlFile(m.device.address) })) : []),
            ...(resetMethod?.undo ?? []),
            // A failed change gives the console back too (the members are back on their drivers by then).
            ...(handover ? [...(plan.group !== null && deadMan.length ? disarmDeadManOps(plan.group) : []), ...handover.undo] : []),
        ],
    };
    return {
        ...plan,
        driver,
        changing,
        ops,
        readBack: plan.members.map((m) => driverLinkOp(m.device.address)),
        persistence: [...persistenceOps(plan, persistent, driver, wasPersistent, previous), ...(resetMethod?.persist ?? []), ...unsetReset],
        rollback,
        kept: record ?? (facts.view.journal ? journalOf(address, facts.view.journal.members) : undefined),
        ...(resetMethod ? { resetMethod } : {}),
        ...(console ? { console } : {}),
    };
}

/**
 * The dead-man's batch (console/handover.ts): the group-holders guard first (a running VM stops it before any
 * write), every managed member back to what it had before us without a reset (no VM used the GPU), the console
 * back, and the binding's journal dropped once every member is back. Every write is optional: it goes as far as
 * it can, as a release does.
 */
function deadManRelease(address: string, driver: string, members: MemberPlan[], record: ConsoleRecord): Op[] {
    const entries = members.filter((m) => m.managed).map((m) => ({ address: m.device.address, state: m.previous, now: { driver, override: driver } }));
    return [
        { op: "groupHolders", path: `${PCI_DEVICES}/${address}`, guard: true },
        ...entries.flatMap((b) => restoreEntryOps(b)),
        ...consoleRestoreOps(record),
        dropConsoleJournalOp(address),
        ...arrivedGuards(entries.map((b) => ({ address: b.address, to: b.state }))),
        dropJournalOp(address),
    ];
}

// ------------------------------------------------------------------------------------------------ a release

/** Delete's first batch, planned from the state alone: {@link planRelease}. */
export interface BindingRelease {
    /** Stops the batch while a process holds the group open (the unbinds would block in the kernel). */
    guard: Op;
    /** The managed members, each with what it goes back to, what the state says it is on now, and its reset. */
    members: (RestoreEntry & { now: DeviceState; resetOnRelease?: string })[];
    /** Each member's restore sequence, in member order; every write optional (a restore goes as far as it can). */
    ops: Op[];
    /** The driverctl files this binding wrote (a file the host had before us stays). */
    cleanup: Op[];
    /** Per member, its `driver` link and `driver_override`, read back. */
    readBack: Op[];
    /** The journal's removal, behind guards that hold only once every member is back. */
    done: Op[];
    /** What the binding's handover did to the console, given back by `consoleOps` (after `cleanup`) and read back. */
    console?: ConsoleRecord;
    consoleOps: Op[];
}

/**
 * Release the group as the state recorded it: the inverse of the change, in one batch. A step that needs a member
 * on no driver goes between the `leave` and `enter` of its restore sequence, as in {@link memberOps}.
 */
export function planRelease(props: IommuBindingOutputs): BindingRelease {
    const managed = (props.members ?? []).filter((m) => m.managed);
    const members = managed.map((m) => ({ address: m.address, state: recordedState(m), now: { driver: m.driver, override: props.driver }, resetOnRelease: m.resetOnRelease }));
    return {
        guard: { op: "groupHolders", path: `${PCI_DEVICES}/${props.address}`, guard: true },
        members,
        // The dead-man goes first (after the guard: while a VM holds the group, nothing changes, and it stays armed).
        ops: [...(props.console?.deadMan && props.group !== null ? disarmDeadManOps(props.group) : []), ...members.flatMap((b) => restoreEntryOps(b, b.resetOnRelease !== undefined))],
        cleanup: [
            ...(props.persistent ? members.map((b): Op => ({ op: "remove", path: driverctlFile(b.address), optional: true })) : []),
            ...(props.resetMethodBefore !== undefined ? unsetResetMethodOps(props.address, props.resetMethodBefore) : []),
        ],
        // The console back once the host driver is on the GPU again (a failed reset stops the batch before it).
        consoleOps: props.console ? consoleRestoreOps(props.console) : [],
        ...(props.console ? { console: props.console } : {}),
        readBack: members.flatMap((b) => stateReadOps(b.address)),
        // The console journal goes with the binding's, once every member is back.
        done: [...arrivedGuards(members.map((b) => ({ address: b.address, to: b.state }))), dropJournalOp(props.address), ...(props.console ? [dropConsoleJournalOp(props.address)] : [])],
    };
}

/**
 * The members to restore when delete's first batch did not bring every one back: from the group as read now
 * (`now`: null for a member gone), each to what the binding's journal recorded (the host's own drivers win over the
 * state's) or else what the state did.
 */
export function planRestoreFromHost(members: BindingMember[], now: Map<string, DeviceState | null>, journal: Journal | undefined): RestoreEntry[] {
    const entries = new Map((journal?.members ?? []).map((e) => [e.address, e]));
    return members
        .filter((m) => (m.managed || entries.has(m.address)) && now.get(m.address))
        .map((m) => ({ address: m.address, state: entries.has(m.address) ? journaledState(entries.get(m.address)!) : recordedState(m), now: now.get(m.address)! }));
}

/** A restore entry's sequence (from a known state now) as ops; with `reset`, the function's reset goes between its
 *  unbind and its host driver's bind (only when the sequence does unbind it: a function not leaving a driver is not
 *  reset under it). */
export function restoreEntryOps(b: RestoreEntry & { now: DeviceState }, reset = false): Op[] {
    const s = restoreSequence(b.address, b.now, b.state);
    const unbinds = s.leave.some((o) => o.op === "write" && o.path.endsWith("/unbind"));
    return [...s.leave, ...(reset && unbinds ? releaseResetOps(b.address) : []), ...s.enter];
}

/** The reset writes among `ops` that failed (not skipped), with their result: what a release reports. */
export function failedResets(ops: Op[], results: { ok: boolean; skipped?: boolean; errno?: string; message?: string }[]): { address: string; op: Op; errno?: string; message?: string }[] {
    return ops.flatMap((op, i) => {
        const r = results[i];
        if (!isResetWrite(op) || !r || r.ok || r.skipped) return [];
        return [{ address: op.path.split("/").slice(-2)[0], op, errno: r.errno, message: r.message }];
    });
}

/** A member's `driver` link and `driver_override`, for a read-back. */
export function stateReadOps(address: string): Op[] {
    return [driverLinkOp(address), { op: "read", path: `${PCI_DEVICES}/${address}/driver_override` }];
}
