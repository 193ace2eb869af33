/**
 * Looking Glass's kvmfr module (module/kvmfr.c, doc/ivshmem_kvmfr.rst): one module parameter array,
 * `static_size_mb` (at most 10 entries), creates `/dev/kvmfr0..N-1` when the module loads; there is no other
 * device-count parameter and no way to resize a device but to reload the module, which removes every device —
 * impossible while a VM holds one. The parameter is registered with mode 0000, so it is not readable under
 * /sys/module/kvmfr/parameters: what the loaded module was given is recorded by us when we load it.
 *
 * Files users write by hand today, and which every KvmfrDevice on a host shares:
 *   /etc/modprobe.d/kvmfr.conf       options kvmfr static_size_mb=32,64
 *   /etc/modules-load.d/kvmfr.conf   kvmfr
 *   /etc/udev/rules.d/99-kvmfr.rules SUBSYSTEM=="kvmfr", KERNEL=="kvmfr0", OWNER="...", GROUP="kvm", MODE="0660"
 */
import { ivshmemArgs } from "../qemu/cmdline";
import { moduleOptions, optionsLine } from "../boot/modprobe";

export const KVMFR_MODULE = "kvmfr";
export const KVMFR_MAX_DEVICES = 10;
export const MODPROBE_CONF = "/etc/modprobe.d/kvmfr.conf";
export const MODULES_LOAD_CONF = "/etc/modules-load.d/kvmfr.conf";
export const UDEV_RULES = "/etc/udev/rules.d/99-kvmfr.rules";
/** What the loaded module was given (kvmfr hides its parameter): written by us on every load; /run resets at boot. */
export const LOADED_SIZES = "/run/pulumi-vfio/kvmfr.static_size_mb";
export const KVMFR_CLASS = "/sys/class/kvmfr";

export const kvmfrPath = (index: number) => `/dev/kvmfr${index}`;

export type KvmfrFormula = "b7" | "current";

const MiB = 1024 * 1024;

/** Smallest power of two ≥ n (n > 0). */
export function nextPowerOfTwo(n: number): number {
    let p = 1;
    while (p < n) p *= 2;
    return p;
}

export function isPowerOfTwo(n: number): boolean {
    return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * The shared-memory size for a resolution, in MiB, as Looking Glass documents it:
 * - `b7` (B7 docs, "Determining memory"): width × height × BPP × 2 bytes, in MiB, + 10, rounded up to a power of two;
 *   BPP is 4 (SDR) or 8 (HDR). 1920×1080 → 32, 2560×1440 → 64, 1920×1080 HDR → 64.
 * - `current` (newer docs): ceil(width × BPP / 256) × 256 × height × 3 bytes + 4 MiB, rounded up to a power of two
 *   (rows padded to 256 bytes, three frames). The docs give BPP 4; for HDR we use 8, as the B7 formula does.
 */
export function kvmfrSizeMb(width: number, height: number, hdr = false, formula: KvmfrFormula = "b7"): number {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
        throw new Error(`a resolution needs positive integer width and height, got ${width}×${height}`);
    }
    const bpp = hdr ? 8 : 4;
    if (formula === "b7") return nextPowerOfTwo(Math.ceil((width * height * bpp * 2) / MiB + 10));
    const pitch = Math.ceil((width * bpp) / 256) * 256;
    return nextPowerOfTwo(Math.ceil((pitch * height * 3) / MiB + 4));
}

// ----------------------------------------------------------------------------------------------- modprobe.d

/** The `static_size_mb` array of a modprobe.d file's `options kvmfr ...` lines (the last one wins, as in modprobe). */
export function parseModprobeConf(text: string | undefined): number[] {
    const v = moduleOptions(text, KVMFR_MODULE).static_size_mb;
    return v === undefined ? [] : v.split(",").filter((x) => x !== "").map(Number);
}

export function renderModprobeConf(sizes: number[]): string {
    return [
        "# Written by pulumi-vfio (KvmfrDevice): one size in MiB per /dev/kvmfrN, in order. Shared by every KvmfrDevice",
        "# on this host; changing it takes effect when the kvmfr module is reloaded.",
        optionsLine(KVMFR_MODULE, { static_size_mb: sizes }),
        "",
    ].join("\n");
}

export const MODULES_LOAD_TEXT = "# Written by pulumi-vfio (KvmfrDevice): load Looking Glass's kvmfr module at boot.\nkvmfr\n";

export interface SizeMerge {
    sizes: number[];
    /** Set when the index cannot be placed: the array has no entries below it. */
    gap?: string;
}

/** Put `sizeMb` at `index` of the shared array. Every lower index must already have a size (kvmfr numbers devices by position). */
export function mergeSize(current: number[], index: number, sizeMb: number): SizeMerge {
    if (index > current.length) {
        const missing = Array.from({ length: index - current.length }, (_, i) => `kvmfr${current.length + i}`);
        return {
            sizes: current,
            gap: `kvmfr numbers its devices by position in static_size_mb (${MODPROBE_CONF} has ${current.length ? current.join(",") : "no sizes"}), so /dev/kvmfr${index} needs ${missing.join(", ")} first: declare a KvmfrDevice for ${missing.length > 1 ? "each of them" : "it"} and make this one dependOn it`,
        };
    }
    const sizes = [...current];
    sizes[index] = sizeMb;
    return { sizes };
}

/**
 * The array without `index`. Only the last entry can go (the others would be renumbered); a middle one stays, a
 * device nobody manages, which is what a hand-written file would keep too.
 */
export function removeSize(current: number[], index: number): number[] {
    return index === current.length - 1 ? current.slice(0, -1) : [...current];
}

// ----------------------------------------------------------------------------------------------- udev

export interface KvmfrAccess {
    owner: string;
    group: string;
    /** Octal string, e.g. `0660`. */
    mode: string;
}

/** One rule per device, so several KvmfrDevices with different owners share the file. */
export function udevRule(index: number, a: KvmfrAccess): string {
    return `SUBSYSTEM=="kvmfr", KERNEL=="kvmfr${index}", OWNER="${a.owner}", GROUP="${a.group}", MODE="${a.mode}"`;
}

/** Replace (or add, or with `access` undefined remove) the rule line for kvmfrN; other lines are kept in order. */
export function mergeUdevRules(text: string | undefined, index: number, access: KvmfrAccess | undefined): string {
    const mine = new RegExp(`KERNEL=="kvmfr${index}"`);
    const lines = (text ?? "").split("\n").filter((l) => l.trim() !== "" && !mine.test(l) && !l.startsWith("# Written by pulumi-vfio"));
    if (access) lines.push(udevRule(index, access));
    const rules = lines.filter((l) => !l.startsWith("#"));
    if (rules.length === 0) return "";
    const sorted = [...lines].sort((a, b) => kernelIndex(a) - kernelIndex(b));
    return ["# Written by pulumi-vfio (KvmfrDevice): permissions of the Looking Glass kvmfr devices.", ...sorted, ""].join("\n");
}

const kernelIndex = (l: string) => {
    const m = /KERNEL=="kvmfr(\d+)"/.exec(l);
    return m ? Number(m[1]) : -1;
};

/** The rule of kvmfrN in a rules file, parsed; undefined when it has none. */
export function parseUdevRule(text: string | undefined, index: number): KvmfrAccess | undefined {
    const line = (text ?? "").split("\n").find((l) => new RegExp(`KERNEL=="kvmfr${index}"`).test(l));
    if (!line) return undefined;
    const get = (k: string) => new RegExp(`${k}="([^"]*)"`).exec(line)?.[1];
    return { owner: get("OWNER") ?? "root", group: get("GROUP") ?? "root", mode: get("MODE") ?? "0600" };
}

// ----------------------------------------------------------------------------------------------- facts

/** What `stat` says is at /dev/kvmfrN. */
export type NodeKind = "char" | "file" | "absent" | "other";

export interface KvmfrNode {
    kind: NodeKind;
    mode?: string;
    uid?: number;
    gid?: number;
    size?: number;
}

/** Parse our stat line (`type mode uid gid size major:minor`). */
export function parseStat(ok: boolean, data: string): KvmfrNode {
    if (!ok) return { kind: "absent" };
    const m = /^(.*?) ([0-7]+) (\d+) (\d+) (\d+) /.exec(data.trim() + " ");
    if (!m) return { kind: "other" };
    const type = m[1];
    const kind: NodeKind = type.startsWith("character") ? "char" : type.startsWith("regular") ? "file" : "other";
    return { kind, mode: m[2].padStart(4, "0"), uid: Number(m[3]), gid: Number(m[4]), size: Number(m[5]) };
}

/**
 * /dev/kvmfrN holds the guest's frames as the Looking Glass client reads them: permission for "other" is refused.
 * Other-readable (0664, 0644) lets every local user watch the guest's screen, other-writable lets them draw on it;
 * the client's user gets access through `owner` or `group` instead.
 */
export function modeProblem(mode: string): string | undefined {
    if (!/^0?[0-7]{3}$/.test(mode)) return `mode ${JSON.stringify(mode)} is not an octal file mode such as "0660"`;
    const bits = parseInt(mode, 8);
    const what = [bits & 0o004 ? "read the guest's framebuffer (other-readable)" : "", bits & 0o002 ? "write into it (other-writable)" : ""].filter(Boolean);
    const fix = `use "0660" (or "0600") and give the Looking Glass client's user access with owner or group (e.g. group: kvm)`;
    if (what.length) return `mode ${mode} lets every local user ${what.join(" and ")}; ${fix}`;
    if (bits & 0o001) return `mode ${mode} gives other users a permission bit (o+x); ${fix}`;
    return undefined;
}

export function normalizeMode(mode: string): string {
    return parseInt(mode, 8).toString(8).padStart(4, "0");
}

/** What a host without the module is told. No distribution ships kvmfr; Looking Glass's source carries a DKMS package. */
export function missingModuleMessage(host: string, kernelRelease: string): string {
    return (
        `the kvmfr kernel module is not installed on ${host} (modprobe cannot find it for kernel ${kernelRelease || "(unknown)"}). ` +
        "No distribution ships it; install Looking Glass's DKMS module: install dkms and the headers of the running kernel " +
        "(apt install dkms linux-headers-$(uname -r)), download the Looking Glass source matching your client from " +
        "https://looking-glass.io/downloads, then run `dkms install .` in its module/ directory " +
        "(https://looking-glass.io/docs/stable/ivshmem_kvmfr/). Without it, give PassthroughVm a /dev/shm file as sharedMemory instead"
    );
}

/** The QEMU arguments that put /dev/kvmfrN into a VM (ivshmem_kvmfr.rst, "QEMU"). */
export function kvmfrQemuArgs(index: number, sizeMb: number): string[] {
    return ivshmemArgs(kvmfrPath(index), sizeMb, index);
}
