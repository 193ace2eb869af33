/**
 * Console handover for single-GPU passthrough (IommuBinding `consoleHandover`): what holds the host's console, the
 * ordered steps that free the GPU it runs on before the group leaves its host driver, the reverse on release, and
 * the dead-man timer that gives the console back by itself when no VM took the GPU. Pure planning over what was
 * read; binding/plan.ts puts the steps into the change's and the release's batches, binding/apply.ts runs them.
 *
 * Kernel facts (DOMAIN.md "Reset and the host console"; seen on the lab's 6.1 kernel with bochs-drm's fbcon):
 * - `/sys/class/vtconsole/vtconN/name` and `bind` (1 bound, 0 not), N below MAX_NR_CON_DRIVER (16,
 *   include/linux/console.h). fbcon is `(M) frame buffer device`; writing 0 to its `bind` hands the virtual
 *   consoles to the dummy console (`(M) dummy device`, then bound). When the last framebuffer goes (the DRM driver
 *   unbinds) fbcon lets go by itself; when a framebuffer registers again (the host driver binds) it takes the
 *   consoles back by itself (drivers/video/fbdev/core/fbcon.c, do_fbcon_takeover). Writing 1 while no framebuffer
 *   exists succeeds and changes nothing.
 * - Boot framebuffers are platform devices: `efi-framebuffer.0` (driver `efi-framebuffer`), `simple-framebuffer.0`
 *   (`simple-framebuffer`, which simpledrm and simplefb register), `vesa-framebuffer.0`; unbind and bind through
 *   `/sys/bus/platform/drivers/<driver>/{unbind,bind}`. A DRM driver that binds the GPU removes them (the DRM
 *   aperture helpers), so with the host's driver on the GPU there is usually none left; without one (NVIDIA's
 *   driver, or a GPU left to efifb) it holds the GPU's BAR ("BAR 0: can't reserve").
 * - The display manager is the systemd unit `display-manager.service` on systemd distributions (an alias to gdm,
 *   sddm, lightdm…). `systemctl stop` returns once the unit stopped; `systemctl is-active` prints the state.
 * - The dead-man is a transient timer (`systemd-run --on-active=<s>`) whose service runs pulumi-vfio's own batch
 *   interpreter (provider/host/batch.sh) on a batch file written at the handover: nothing is a shell string, and it
 *   runs under the same host lock as pulumi-vfio, even with no `pulumi` process alive.
 */
import { BatchQuery, Part } from "../host/query";
import { Op, OpResult } from "../host/types";
import { LOCK_PATH } from "../host/lock";
import { JOURNAL_DIR } from "../sysfs/journal";

export const VTCONSOLE_DIR = "/sys/class/vtconsole";
/** MAX_NR_CON_DRIVER (include/linux/console.h): vtcon0 … vtcon15. */
export const MAX_VTCONSOLES = 16;
export const PLATFORM_DEVICES = "/sys/bus/platform/devices";
export const PLATFORM_DRIVERS = "/sys/bus/platform/drivers";
/** The boot framebuffers the kernel's sysfb code registers (drivers/firmware/sysfb.c), with their drivers. */
export const BOOT_FRAMEBUFFERS = [
    { device: "efi-framebuffer.0", driver: "efi-framebuffer" },
    { device: "simple-framebuffer.0", driver: "simple-framebuffer" },
    { device: "vesa-framebuffer.0", driver: "vesa-framebuffer" },
] as const;
export const SYSTEMD_RUN = ["/usr/bin/systemd-run", "/bin/systemd-run"];
/** Where the dead-man's interpreter and batch live: /run, so a reboot (which gives the console back) clears them. */
export const DEADMAN_DIR = "/run/pulumi-vfio/console";
/** How long the dead-man waits for the host lock (a `pulumi up` holding it) before it gives up, in seconds. */
export const DEADMAN_LOCK_SECONDS = 120;
/** How long its service may run at most, in seconds (a sysfs write that hangs must not keep it forever). */
export const DEADMAN_RUNTIME_SECONDS = 600;
/** `systemctl stop` of a display manager waits for it to end (a session saving its state): generous. */
const SYSTEMCTL_TIMEOUT_MS = 90_000;

/**
 * The console's journal: what a handover took (a {@link ConsoleRecord}), written in the change's batch before its
 * first step, beside the binding's journal and for the same reason: a provider killed after stopping the display
 * manager must not lose that it was running. Removed once the console is back.
 */
export const consoleJournalPath = (address: string) => `${JOURNAL_DIR}/console-${address}.json`;

/** The dead-man's transient unit name for IOMMU group `group` (`.timer` and `.service` share it). */
export const deadManUnit = (group: number) => `pulumi-vfio-deadman-${group}`;
export const deadManBatchFile = (group: number) => `${DEADMAN_DIR}/deadman-${group}.batch`;
/** A copy of the batch interpreter per group, so that removing one group's dead-man never touches another's. */
export const deadManScript = (group: number) => `${DEADMAN_DIR}/deadman-${group}.sh`;

/** What holds the host's console, as read (one batch, see {@link readConsole}). */
export interface ConsoleFacts {
    /** Every registered console driver: `vtcon0`, its `name` (`(M) frame buffer device`) and whether it is bound. */
    vtconsoles: { id: string; name: string; bound: boolean }[];
    /** The boot framebuffers present, each with the platform driver it is bound to (null: none). */
    framebuffers: { device: string; driver: string | null }[];
    /** The display manager unit and its `systemctl is-active` state (`active`, `inactive`, `failed`, …). */
    displayManager: { unit: string; state: string };
    /** systemd-run exists (the dead-man needs it). */
    systemdRun: boolean;
    /** The console journal of a handover that did not finish or whose state was lost: what the host had then. */
    journal?: ConsoleRecord;
}

/** What a handover did, kept in the binding's outputs (`console`) so that destroy and the dead-man undo exactly it. */
export interface ConsoleRecord {
    /** The display manager unit stopped by the handover (it was active); absent: none was. */
    displayManagerStopped?: string;
    /** The vtconsoles unbound (`vtcon0`). */
    vtconsoles: string[];
    /** The boot framebuffers unbound from their platform driver. */
    framebuffers: { device: string; driver: string }[];
    /** The dead-man armed at the handover: its unit and delay in seconds. */
    deadMan?: { unit: string; seconds: number };
}

export const isFbcon = (v: { name: string }) => /frame buffer device/.test(v.name);

/** Add the reads that tell what holds the console to `q`: builtins but one `systemctl is-active`. */
export function readConsole(q: BatchQuery, displayManager: string, address: string): Part<ConsoleFacts> {
    const ids = Array.from({ length: MAX_VTCONSOLES }, (_, i) => `vtcon${i}`);
    const vts = q.each(ids, (id): Op[] => [{ op: "read", path: `${VTCONSOLE_DIR}/${id}/name` }, { op: "read", path: `${VTCONSOLE_DIR}/${id}/bind` }], (id, [name, bind]) => (name.ok ? { id, name: name.data.trim(), bound: bind.ok && bind.data.trim() === "1" } : undefined));
    const fbs = q.each(BOOT_FRAMEBUFFERS, (f): Op[] => [{ op: "stat", path: `${PLATFORM_DEVICES}/${f.device}` }, { op: "readlink", path: `${PLATFORM_DEVICES}/${f.device}/driver` }], (f, [exists, link]) =>
        exists.ok ? { device: f.device, driver: link.ok && link.data.trim() ? link.data.trim().split("/").pop()! : null } : undefined,
    );
    const dm = q.one({ op: "exec", argv: ["systemctl", "is-active", displayManager], optional: true, timeoutMs: 30_000 }, (r) => r.data.trim() || (r.ok ? "active" : "unknown"));
    const run = q.add(SYSTEMD_RUN.map((p): Op => ({ op: "stat", path: p })), (r) => r.some((x) => x.ok));
    const journal = q.one({ op: "read", path: consoleJournalPath(address) }, (r) => (r.ok ? parseRecord(r.data) : undefined));
    return (r) => {
        const j = journal(r);
        return {
            vtconsoles: vts(r).filter((v): v is NonNullable<typeof v> => !!v),
            framebuffers: fbs(r).filter((f): f is NonNullable<typeof f> => !!f),
            displayManager: { unit: displayManager, state: dm(r) },
            systemdRun: run(r),
            ...(j ? { journal: j } : {}),
        };
    };
}

/** A console journal's record; undefined for an empty or unreadable one (a write cut short). */
function parseRecord(text: string): ConsoleRecord | undefined {
    try {
        const o = JSON.parse(text);
        if (!o || !Array.isArray(o.vtconsoles) || !Array.isArray(o.framebuffers)) return undefined;
        const vtconsoles = o.vtconsoles.filter((v: unknown): v is string => typeof v === "string" && /^vtcon\d+$/.test(v));
        const framebuffers = o.framebuffers.filter((f: any) => BOOT_FRAMEBUFFERS.some((b) => b.device === f?.device && b.driver === f?.driver)).map((f: any) => ({ device: f.device, driver: f.driver }));
        const dm = typeof o.displayManagerStopped === "string" && /^[A-Za-z0-9:_.@-]+\.service$/.test(o.displayManagerStopped) ? o.displayManagerStopped : undefined;
        return { ...(dm ? { displayManagerStopped: dm } : {}), vtconsoles, framebuffers };
    } catch {
        return undefined;
    }
}

/** Everything any of `records` took, so that a release gives all of it back (each step is harmless when repeated). */
export function mergeRecords(...records: (ConsoleRecord | undefined)[]): ConsoleRecord {
    const rs = records.filter((r): r is ConsoleRecord => !!r);
    const dm = rs.find((r) => r.displayManagerStopped)?.displayManagerStopped;
    const fbs = new Map(rs.flatMap((r) => r.framebuffers).map((f) => [f.device, f]));
    return { ...(dm ? { displayManagerStopped: dm } : {}), vtconsoles: [...new Set(rs.flatMap((r) => r.vtconsoles))].sort(), framebuffers: [...fbs.values()] };
}

/** The console journal's write, first in the change (before any step), and its removal once the console is back. */
export function writeConsoleJournalOps(address: string, record: ConsoleRecord): Op[] {
    const { deadMan: _, ...taken } = record;
    return [
        { op: "mkdir", path: JOURNAL_DIR, mode: 0o700 },
        { op: "put", path: consoleJournalPath(address), data: JSON.stringify(taken) + "\n", mode: 0o600 },
    ];
}
export const dropConsoleJournalOp = (address: string): Op => ({ op: "remove", path: consoleJournalPath(address), optional: true });

/** The handover's steps, planned from the facts. */
export interface HandoverPlan {
    record: ConsoleRecord;
    /** Before any member leaves its driver, in order, each write followed by a guard that reads it back. */
    before: Op[];
    /** What undoes `before` when the change fails later (every op optional: it goes as far as it can). */
    undo: Op[];
    /** Preview lines, in the order the steps run. */
    lines: string[];
}

/**
 * The steps that free the console of the GPU: the console journal first, then stop the display manager (when
 * active), unbind every bound framebuffer console, unbind every boot framebuffer from its driver. `gpu` names the
 * display function(s) for the lines; `earlier` is the state's record of an earlier handover. Pure.
 */
export function planHandover(facts: ConsoleFacts, gpu: string, address: string, earlier?: ConsoleRecord): HandoverPlan {
    const record: ConsoleRecord = { vtconsoles: [], framebuffers: [] };
    const before: Op[] = [];
    const steps: string[] = [];
    if (facts.displayManager.state === "active") {
        record.displayManagerStopped = facts.displayManager.unit;
        before.push({ op: "exec", argv: ["systemctl", "stop", facts.displayManager.unit], timeoutMs: SYSTEMCTL_TIMEOUT_MS });
        steps.push(`stop ${facts.displayManager.unit} (active now)`);
    }
    for (const v of facts.vtconsoles.filter((v) => v.bound && isFbcon(v))) {
        record.vtconsoles.push(v.id);
        before.push({ op: "write", path: `${VTCONSOLE_DIR}/${v.id}/bind`, data: "0" }, { op: "read", path: `${VTCONSOLE_DIR}/${v.id}/bind`, expect: "0" });
        steps.push(`unbind ${v.id} (${v.name}; the virtual consoles go to the dummy console)`);
    }
    for (const f of facts.framebuffers) {
        if (!f.driver) continue;
        record.framebuffers.push({ device: f.device, driver: f.driver });
        before.push({ op: "write", path: `${PLATFORM_DRIVERS}/${f.driver}/unbind`, data: f.device }, { op: "readlink", path: `${PLATFORM_DEVICES}/${f.device}/driver`, expect: "" });
        steps.push(`unbind the boot framebuffer ${f.device} from ${f.driver}`);
    }
    const lines = steps.length
        ? [`console handover, before ${gpu} leaves its driver: ${steps.map((s, i) => `${i + 1}. ${s}`).join("; ")}`]
        : [`console handover: nothing holds the console now (${facts.displayManager.unit} ${facts.displayManager.state}, no framebuffer console bound, no boot framebuffer)`];
    // What an earlier handover took and did not give back (its journal: a provider killed half-way; the state's
    // record) is given back too: the host had it before us.
    const all = mergeRecords(facts.journal, earlier, record);
    before.unshift(...writeConsoleJournalOps(address, all));
    return { record: all, before, undo: [...consoleRestoreOps(all), dropConsoleJournalOp(address)], lines };
}

/**
 * The console back, in the reverse order: every boot framebuffer rebound, every vtconsole bound again, the display
 * manager started; every op optional (a release goes as far as it can). Run after the host driver is back on the GPU:
 * its framebuffer is what fbcon takes the consoles back on. A framebuffer the host driver removed answers ENODEV or
 * ENOENT, which is fine: the host driver's own framebuffer holds the console then.
 */
export function consoleRestoreOps(record: ConsoleRecord): Op[] {
    return [
        ...[...record.framebuffers].reverse().map((f): Op => ({ op: "write", path: `${PLATFORM_DRIVERS}/${f.driver}/bind`, data: f.device, optional: true })),
        ...[...record.vtconsoles].reverse().map((id): Op => ({ op: "write", path: `${VTCONSOLE_DIR}/${id}/bind`, data: "1", optional: true })),
        ...(record.displayManagerStopped ? [{ op: "exec", argv: ["systemctl", "start", record.displayManagerStopped], timeoutMs: SYSTEMCTL_TIMEOUT_MS, optional: true } as Op] : []),
    ];
}

/** Preview line of what destroy does for the console. */
export function releaseLine(record: ConsoleRecord, gpu: string, hostDriver: string): string {
    const steps = [
        ...[...record.framebuffers].reverse().map((f) => `bind ${f.device} to ${f.driver} again (where ${hostDriver} left it)`),
        ...[...record.vtconsoles].reverse().map((id) => `bind ${id} again (fbcon also takes the consoles back by itself when ${hostDriver} registers its framebuffer)`),
        ...(record.displayManagerStopped ? [`start ${record.displayManagerStopped}`] : []),
    ];
    return steps.length ? `console release on destroy, once ${gpu} is back on ${hostDriver}: ${steps.map((s, i) => `${i + 1}. ${s}`).join("; ")}` : `console release on destroy: nothing to give back beyond ${gpu} on ${hostDriver}`;
}

/** What the console looks like after a release, read back: which of the record's steps did not come back. */
export function consoleReadBack(q: BatchQuery, record: ConsoleRecord): Part<string[]> {
    const vts = q.each(record.vtconsoles, (id): Op[] => [{ op: "read", path: `${VTCONSOLE_DIR}/${id}/bind` }], (id, [r]) => (r.ok && r.data.trim() === "1" ? undefined : `${id} is not bound (${r.ok ? `bind reads ${r.data.trim()}` : r.errno ?? "unreadable"})`));
    const dm = record.displayManagerStopped
        ? q.one({ op: "exec", argv: ["systemctl", "is-active", record.displayManagerStopped], optional: true, timeoutMs: 30_000 }, (r) => (r.data.trim() === "active" ? undefined : `${record.displayManagerStopped} is ${r.data.trim() || "not active"}`))
        : () => undefined;
    return (r) => [...vts(r), dm(r)].filter((x): x is string => !!x);
}

/** The reads of a release's console read-back failed: the words for them. */
export const describeFailedRestores = (ops: Op[], results: OpResult[]): string[] =>
    ops.flatMap((op, i) => {
        const r = results[i];
        if (!r || r.ok || r.skipped) return [];
        if (op.op === "write" && op.path.startsWith(PLATFORM_DRIVERS) && (r.errno === "ENODEV" || r.errno === "ENOENT")) return [];
        const what = op.op === "exec" ? op.argv.join(" ") : op.op === "write" ? `writing ${op.data} to ${op.path}` : `${op.op} ${op.path}`;
        return [`${what} failed (${r.errno ?? r.message ?? `status ${r.code}`})`];
    });

/**
 * The dead-man: the files and the transient timer that run `release` (the binding's release without resets, then
 * {@link consoleRestoreOps}) `seconds` after now unless a process holds the group by then. `release` must start with the
 * group-holders guard, so that a running VM stops the batch before its first write. Any timer of the same group is
 * stopped first (an update that hands over again).
 */
export function armDeadManOps(group: number, seconds: number, script: string, release: Op[], encode: (ops: Op[]) => string): Op[] {
    const unit = deadManUnit(group);
    const file = deadManBatchFile(group);
    return [
        ...disarmDeadManOps(group),
        { op: "mkdir", path: DEADMAN_DIR, mode: 0o700 },
        { op: "put", path: deadManScript(group), data: script, mode: 0o700 },
        { op: "put", path: file, data: encode(release), mode: 0o600 },
        {
            op: "exec",
            argv: [
                "systemd-run",
                `--unit=${unit}`,
                `--description=pulumi-vfio dead-man: give the host console back unless a VM holds /dev/vfio/${group}`,
                `--on-active=${seconds}s`,
                "--timer-property=AccuracySec=1s",
                `--property=StandardInput=file:${file}`,
                `--property=RuntimeMaxSec=${DEADMAN_RUNTIME_SECONDS}`,
                "--collect",
                "/bin/bash",
                deadManScript(group),
                LOCK_PATH,
            ],
            timeoutMs: 30_000,
        },
    ];
}

/** Stop the dead-man's timer (and its service, should it be running) and remove its files; all optional. */
export function disarmDeadManOps(group: number): Op[] {
    const unit = deadManUnit(group);
    return [
        { op: "exec", argv: ["systemctl", "stop", `${unit}.timer`, `${unit}.service`], optional: true, timeoutMs: 30_000 },
        { op: "remove", path: deadManBatchFile(group), optional: true },
        { op: "remove", path: deadManScript(group), optional: true },
    ];
}

/** Preview line for the dead-man. */
export function deadManLine(group: number, seconds: number): string {
    return `dead-man ${deadManUnit(group)}.timer (systemd, on the host): ${seconds} s after the handover, unless a process holds /dev/vfio/${group} then (a running VM), it gives the console back as destroy would (without resets), even with no pulumi running; \`journalctl -u ${deadManUnit(group)}\` shows what it did`;
}
