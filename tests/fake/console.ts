/**
 * The fake kernel's host console and the bits of systemd a console handover touches, as the lab's 6.1 kernel and
 * systemd 252 behave (proven by tests/contract/console.*):
 * - `/sys/class/vtconsole/vtcon0` is fbcon (`(M) frame buffer device`), `vtcon1` the dummy console. fbcon is bound
 *   to one framebuffer (the boot GPU's at first); writing 0 unbinds it (the dummy console takes the VTs); writing 1
 *   succeeds and changes nothing. Its framebuffer going unbinds it (another GPU's framebuffer does not keep it); a
 *   framebuffer registering (a DRM driver binding a GPU, or a boot framebuffer its driver) while fbcon is unbound
 *   makes fbcon take the consoles on it by itself: that, not a write, is what gives the console back.
 * - Boot framebuffers are platform devices with a platform driver; a DRM driver binding the GPU they sit on removes
 *   them (the DRM aperture helpers). `unbind` of a device not on that driver → ENODEV, `bind` of a bound one → EBUSY,
 *   of an unknown one → ENODEV.
 * - `systemctl is-active|start|stop <unit>…` for the units in `units` (unknown: inactive, code 3; start of one →
 *   code 5 "Unit … not found"; stop of one not loaded → code 5), and `systemd-run --unit=… --on-active=…` records
 *   a transient timer (a second with the same unit → code 1, "was already loaded"), which {@link fireTimers} runs: its
 *   service's stdin file through the batch interpreter's protocol, as the real service runs batch.sh.
 */
import { FakeErrno, FakeKernel, FakeNode, FakeSubsystem } from "./kernel";
import { pci } from "./pci";
import type { FakeHost } from "./host";
import { Op } from "../../provider/host/types";

/** DRM drivers that register a framebuffer (fbdev emulation) when they bind a GPU. */
export const FB_DRIVERS = ["bochs-drm", "amdgpu", "radeon", "nouveau", "i915", "nvidia-drm"];

export interface FakeConsoleState {
    /** The framebuffer fbcon is bound to (`<GPU's PCI address>#<bind count>` of a DRM-bound GPU, `<platform device>#<n>`);
     *  null: unbound. */
    on: string | null;
    /** The framebuffers fbcon saw last. */
    seen: string[];
    /** Boot framebuffers: platform device → its driver (null: unbound), the GPU it sits on; removed ones are gone. */
    platform: { device: string; driver: string; bound: boolean; gpu: string; binds?: number }[];
    /** systemd units and whether each is active. */
    units: Record<string, boolean>;
    /** Transient timers: unit → what its service runs. */
    timers: Record<string, { seconds: number; stdin: string; argv: string[] }>;
    /** What the fired services printed, per unit (the journal). */
    journal: Record<string, string[]>;
}

export function consoleState(k: FakeKernel): FakeConsoleState {
    return k.ext<FakeConsoleState>("console", () => {
        const gpu = Object.values(pci(k).devices).find((d) => d.bootVga && d.driver && FB_DRIVERS.includes(d.driver));
        const boot = gpu ? `${gpu.address}#${gpu.binds ?? 0}` : null;
        return { on: boot, seen: boot ? [boot] : [], platform: [], units: {}, timers: {}, journal: {} };
    });
}

/** The framebuffers that exist now; a platform framebuffer under a DRM-bound GPU is removed first. */
function framebuffers(k: FakeKernel): string[] {
    const c = consoleState(k);
    const drm = Object.values(pci(k).devices).filter((d) => d.driver && FB_DRIVERS.includes(d.driver));
    c.platform = c.platform.filter((p) => !drm.some((d) => d.address === p.gpu));
    // Each bind registers a new framebuffer: its name carries the bind's number.
    return [...drm.map((d) => `${d.address}#${d.binds ?? 0}`), ...c.platform.filter((p) => p.bound).map((p) => `${p.device}#${p.binds ?? 0}`)];
}

/** fbcon's state now: its framebuffer gone unbinds it; one registered since it last looked takes it while unbound. */
function fbconBound(k: FakeKernel): boolean {
    const c = consoleState(k);
    const now = framebuffers(k);
    if (c.on && !now.includes(c.on)) c.on = null;
    const fresh = now.find((f) => !c.seen.includes(f));
    if (!c.on && fresh) c.on = fresh;
    c.seen = now;
    return c.on !== null;
}

const VT = "/sys/class/vtconsole";
const PLAT_DEV = "/sys/bus/platform/devices";
const PLAT_DRV = "/sys/bus/platform/drivers";
const PLATFORM_DRIVERS = ["efi-framebuffer", "simple-framebuffer", "vesa-framebuffer"];
const file = (read: () => string, write?: (data: string) => void): FakeNode => ({ kind: "file", read, write, mode: write ? 0o644 : 0o444 });
const dir = (list: () => string[]): FakeNode => ({ kind: "dir", list });

export const consoleSubsystem: FakeSubsystem = {
    resolve(k, path) {
        if (path === VT) return dir(() => ["vtcon0", "vtcon1"]);
        const vt = /^\/sys\/class\/vtconsole\/(vtcon[01])(?:\/(name|bind))?$/.exec(path);
        if (vt) {
            const fb = vt[1] === "vtcon0";
            if (!vt[2]) return dir(() => ["bind", "name"]);
            if (vt[2] === "name") return file(() => (fb ? "(M) frame buffer device\n" : "(M) dummy device\n"));
            return file(
                () => ((fb ? fbconBound(k) : !fbconBound(k)) ? "1\n" : "0\n"),
                (data) => {
                    const v = data.trim();
                    if (v !== "0" && v !== "1") return; // the kernel ignores anything else
                    fbconBound(k);
                    // fbcon's own bind: 0 releases the consoles to the dummy console; 1 is taken and changes nothing
                    // (as on the lab's 6.1: only a framebuffer registering brings fbcon back). The dummy console's
                    // bind is not modelled: nothing here writes it.
                    if (fb && v === "0") consoleState(k).on = null;
                },
            );
        }
        if (path === PLAT_DEV) {
            framebuffers(k);
            return dir(() => consoleState(k).platform.map((p) => p.device));
        }
        const pd = /^\/sys\/bus\/platform\/devices\/([^/]+)(?:\/(driver))?$/.exec(path);
        if (pd) {
            framebuffers(k);
            const p = consoleState(k).platform.find((x) => x.device === pd[1]);
            if (!p) return undefined;
            if (!pd[2]) return dir(() => (p.bound ? ["driver"] : []));
            return p.bound ? { kind: "link", target: `${PLAT_DRV}/${p.driver}` } : undefined;
        }
        if (path === PLAT_DRV) return dir(() => PLATFORM_DRIVERS);
        const drv = /^\/sys\/bus\/platform\/drivers\/([^/]+)(?:\/(bind|unbind))?$/.exec(path);
        if (drv && PLATFORM_DRIVERS.includes(drv[1])) {
            const name = drv[1];
            if (!drv[2]) return dir(() => ["bind", "unbind", ...consoleState(k).platform.filter((p) => p.driver === name && p.bound).map((p) => p.device)]);
            return file(
                () => {
                    throw new FakeErrno("EACCES");
                },
                (data) => {
                    framebuffers(k);
                    const p = consoleState(k).platform.find((x) => x.device === data.trim() && x.driver === name);
                    if (!p) throw new FakeErrno("ENODEV");
                    if (drv[2] === "unbind") {
                        if (!p.bound) throw new FakeErrno("ENODEV");
                        p.bound = false;
                    } else {
                        if (p.bound) throw new FakeErrno("EBUSY");
                        p.bound = true;
                        p.binds = (p.binds ?? 0) + 1;
                    }
                    fbconBound(k);
                },
            );
        }
        return undefined;
    },

    exec(k, argv) {
        const c = consoleState(k);
        if (argv[0] === "systemctl" && ["is-active", "start", "stop"].includes(argv[1])) {
            const units = argv.slice(2).filter((a) => !a.startsWith("-"));
            if (argv[1] === "is-active") {
                const states = units.map((u) => (c.units[u] || (u.endsWith(".timer") && c.timers[u.replace(/\.timer$/, "")]) ? "active" : "inactive"));
                return { code: states.every((s) => s === "active") ? 0 : 3, stdout: states.map((s) => s + "\n").join("") };
            }
            if (argv[1] === "start") {
                const missing = units.filter((u) => !(u in c.units));
                if (missing.length) return { code: 5, stderr: `Failed to start ${missing[0]}: Unit ${missing[0]} not found.` };
                for (const u of units) c.units[u] = true;
                return { code: 0 };
            }
            // A transient timer is loaded until stopped (or fired, --collect); its service is loaded only while it
            // runs, so stopping both of an armed timer stops the timer and answers 5 for the service.
            const armed = (u: string) => u.endsWith(".timer") && !!c.timers[u.replace(/\.timer$/, "")];
            const missing = units.find((u) => !armed(u) && !(u in c.units));
            for (const u of units) {
                if (armed(u)) delete c.timers[u.replace(/\.timer$/, "")];
                else if (u in c.units) c.units[u] = false;
            }
            return missing ? { code: 5, stderr: `Failed to stop ${missing}: Unit ${missing} not loaded.` } : { code: 0 };
        }
        if (argv[0] === "systemd-run") {
            const opt = (name: string) => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
            const unit = opt("unit");
            const onActive = opt("on-active");
            const stdin = argv.find((a) => a.startsWith("--property=StandardInput=file:"))?.slice("--property=StandardInput=file:".length);
            if (!unit || !onActive || !stdin) return { code: 1, stderr: "fake systemd-run: only --unit, --on-active and StandardInput=file: are modelled" };
            if (c.timers[unit]) return { code: 1, stderr: `Failed to start transient timer unit: Unit ${unit}.timer was already loaded or has a fragment file.` };
            const i = argv.findIndex((a) => !a.startsWith("-") && a !== "systemd-run");
            c.timers[unit] = { seconds: Number(onActive.replace(/s$/, "")), stdin, argv: argv.slice(i) };
            return { code: 0, stderr: `Running timer as unit: ${unit}.timer\nWill run service as unit: ${unit}.service\n` };
        }
        return undefined;
    },
};

/** Add the console subsystem to a fake machine shaped like the lab (fbcon on the boot GPU, no boot framebuffer,
 *  systemd-run installed, no display manager unit). */
export function addConsole(k: FakeKernel): void {
    k.use(consoleSubsystem, { first: true });
    if (!k.state.files["/usr/bin/systemd-run"]) k.state.files["/usr/bin/systemd-run"] = { data: "", mode: 0o755 };
}

/** A boot framebuffer (`efi-framebuffer.0` on driver `efi-framebuffer`) sitting on `gpu`, as firmware leaves it
 *  when the host driver has not taken the GPU. */
export function addBootFramebuffer(k: FakeKernel, gpu: string, device = "efi-framebuffer.0", driver = "efi-framebuffer"): void {
    consoleState(k).platform.push({ device, driver, bound: true, gpu });
}

/**
 * Run every armed timer's service now (as if its time had come), in the order they were armed: its stdin file
 * decoded as the batch interpreter reads it, run on `host`. Returns the units fired.
 */
export async function fireTimers(host: FakeHost): Promise<string[]> {
    const k = host.kernel;
    const c = consoleState(k);
    const fired = Object.keys(c.timers);
    for (const unit of fired) {
        const t = c.timers[unit];
        delete c.timers[unit];
        const text = k.state.files[t.stdin]?.data;
        if (text === undefined) {
            (c.journal[unit] ??= []).push(`${t.stdin}: No such file or directory`);
            continue;
        }
        if (!k.state.files[t.argv[1]]) {
            (c.journal[unit] ??= []).push(`${t.argv[1]}: No such file or directory`);
            continue;
        }
        const { ops, stopOnError } = decodeBatch(text);
        const results = await host.run(ops, { stopOnError });
        (c.journal[unit] ??= []).push(...results.map((r, i) => `${describe(ops[i])}: ${r.skipped ? "skipped" : r.ok ? "ok" : r.errno ?? r.message}`));
    }
    return fired;
}

const describe = (op: Op) => (op.op === "exec" ? op.argv.join(" ") : `${op.op} ${op.path}`);

/** The batch interpreter's protocol (provider/host/batch.sh) back into ops: the inverse of batch.ts's encodeOp. */
export function decodeBatch(text: string): { ops: Op[]; stopOnError: boolean; lockSeconds?: number } {
    const ops: Op[] = [];
    let stopOnError = false;
    let lockSeconds: number | undefined;
    const field = (f: string) => (f === "\\c" ? "" : f.replace(/\\x([0-9a-f]{2})/g, (_, h) => String.fromCharCode(parseInt(h, 16))));
    for (const line of text.split("\n")) {
        const f = line.split(" ");
        const [word, flag] = f;
        if (!word || word === "end") continue;
        if (word === "batch") {
            stopOnError = f[2] === "1";
            continue;
        }
        if (word === "lock") {
            lockSeconds = Number(f[1]);
            continue;
        }
        const optional = flag === "optional" ? { optional: true } : {};
        const path = field(f[2]);
        switch (word) {
            case "exec":
                ops.push({ op: "exec", argv: f.slice(3).map(field), ...optional });
                break;
            case "write":
                ops.push({ op: "write", path, data: field(f[3]), ...optional });
                break;
            case "put":
                ops.push({ op: "put", path, mode: parseInt(field(f[3]), 8), data: field(f[4]), ...optional });
                break;
            case "mkdir":
                ops.push({ op: "mkdir", path, mode: parseInt(field(f[3]), 8), ...optional });
                break;
            case "remove":
                ops.push({ op: "remove", path, ...optional });
                break;
            case "group-holders":
                ops.push({ op: "groupHolders", path, ...(flag === "guard" ? { guard: true } : {}) });
                break;
            case "read":
            case "readlink":
            case "list":
                ops.push({ op: word, path, ...(flag === "expect" ? { expect: field(f[3]) } : {}) });
                break;
            case "stat":
            case "openers":
                ops.push({ op: word, path });
                break;
            default:
                throw new Error(`decodeBatch: unknown line ${JSON.stringify(line)}`);
        }
    }
    return { ops, stopOnError, lockSeconds };
}
