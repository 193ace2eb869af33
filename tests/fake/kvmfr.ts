/**
 * The fake kernel's Looking Glass kvmfr module (module/kvmfr.c), plus the bits of userland around it (udev's
 * permission rules, getent, chown/chmod of the device nodes):
 * - not installed by default, like on the lab host and every distribution: `modprobe kvmfr` fails "not found";
 * - loading reads `options kvmfr static_size_mb=...` from /etc/modprobe.d (or the command line) and creates
 *   `/dev/kvmfr0..N-1` (character devices) and /sys/class/kvmfr/kvmfrN; udev then applies the matching rule of
 *   /etc/udev/rules.d (OWNER/GROUP/MODE), root:root 0600 otherwise;
 * - the parameter is not visible under /sys/module/kvmfr/parameters (kvmfr registers it with mode 0000);
 * - `modprobe -r kvmfr` fails "in use" while any /dev/kvmfrN is open;
 * - a regular file already at /dev/kvmfrN (QEMU started before the module: its memory-backend-file created it)
 *   stays a regular file after the module loads; devtmpfs cannot create the node over it.
 */
import { ExecResult, FakeKernel, FakeNode, FakeSubsystem } from "./kernel";

export interface FakeKvmfrState {
    /** The DKMS module is installed (modprobe finds it). */
    installed: boolean;
    loaded: boolean;
    /** static_size_mb as the loaded module got it. */
    sizes: number[];
    /** Owner, group and mode of each node, as udev (or chown/chmod) left them. */
    nodes: { uid: number; gid: number; mode: number }[];
    major: number;
}

/** Users and groups of the fake machine, for getent and for OWNER/GROUP in udev rules. */
export interface FakeAccounts {
    users: Record<string, number>;
    groups: Record<string, number>;
}

export function kvmfr(k: FakeKernel): FakeKvmfrState {
    return k.ext<FakeKvmfrState>("kvmfr", () => ({ installed: false, loaded: false, sizes: [], nodes: [], major: 240 }));
}

export function accounts(k: FakeKernel): FakeAccounts {
    return k.ext<FakeAccounts>("accounts", () => ({ users: { root: 0, libvirt: 64055, alice: 1000 }, groups: { root: 0, kvm: 104, libvirt: 113, alice: 1000 } }));
}

/** Test control: make the DKMS module available (it is not, as on the lab host). */
export function installKvmfr(k: FakeKernel): void {
    kvmfr(k).installed = true;
}

const devIndex = (path: string) => {
    const m = /^\/dev\/kvmfr(\d)$/.exec(path);
    return m ? Number(m[1]) : undefined;
};

function release(k: FakeKernel): string {
    return k.state.ext.pci?.kernelRelease ?? "6.1.0-fake-amd64";
}

function confSizes(k: FakeKernel): number[] {
    let sizes: number[] = [];
    for (const [p, f] of Object.entries(k.state.files).sort(([a], [b]) => a.localeCompare(b))) {
        if (!p.startsWith("/etc/modprobe.d/") || !p.endsWith(".conf")) continue;
        for (const raw of f.data.split("\n")) {
            const m = /^\s*options\s+kvmfr\s+(.*)$/.exec(raw.replace(/#.*/, ""));
            if (!m) continue;
            for (const opt of m[1].trim().split(/\s+/)) {
                const [key, v] = opt.split("=");
                if (key === "static_size_mb" && v) sizes = v.split(",").filter(Boolean).map(Number);
            }
        }
    }
    return sizes;
}

/** What udev does on `add`: the last matching rule's OWNER/GROUP/MODE, root:root 0600 without one. */
function udevApply(k: FakeKernel, index: number): { uid: number; gid: number; mode: number } {
    const acc = accounts(k);
    const node = { uid: 0, gid: 0, mode: 0o600 };
    for (const [p, f] of Object.entries(k.state.files).sort(([a], [b]) => a.localeCompare(b))) {
        if (!p.startsWith("/etc/udev/rules.d/") || !p.endsWith(".rules")) continue;
        for (const line of f.data.split("\n")) {
            if (!/SUBSYSTEM=="kvmfr"/.test(line)) continue;
            const kernel = /KERNEL=="([^"]*)"/.exec(line)?.[1];
            if (kernel && kernel !== `kvmfr${index}`) continue;
            const owner = /OWNER="([^"]*)"/.exec(line)?.[1];
            const group = /GROUP="([^"]*)"/.exec(line)?.[1];
            const mode = /MODE="([^"]*)"/.exec(line)?.[1];
            if (owner !== undefined && acc.users[owner] !== undefined) node.uid = acc.users[owner];
            if (group !== undefined && acc.groups[group] !== undefined) node.gid = acc.groups[group];
            if (mode !== undefined) node.mode = parseInt(mode, 8);
        }
    }
    return node;
}

function anyOpen(k: FakeKernel): number[] {
    const s = kvmfr(k);
    return s.sizes.flatMap((_, i) => k.openers(`/dev/kvmfr${i}`));
}

function modprobe(k: FakeKernel, args: string[]): ExecResult | undefined {
    const flags = args.filter((a) => a.startsWith("-"));
    const words = args.filter((a) => !a.startsWith("-"));
    if (words[0] !== "kvmfr") return undefined;
    const s = kvmfr(k);
    const quiet = flags.includes("-q") || flags.includes("--quiet");
    const remove = flags.includes("-r") || flags.includes("--remove");
    const dryRun = flags.includes("-n") || flags.includes("--dry-run");
    if (!s.installed) return { code: 1, stderr: quiet ? "" : `modprobe: FATAL: Module kvmfr not found in directory /lib/modules/${release(k)}` };
    if (dryRun) return { code: 0 };
    if (remove) {
        if (!s.loaded) return { code: 0 };
        if (anyOpen(k).length) return { code: 1, stderr: "modprobe: FATAL: Module kvmfr is in use." };
        s.loaded = false;
        s.sizes = [];
        s.nodes = [];
        return { code: 0 };
    }
    if (s.loaded) return { code: 0 };
    let sizes = confSizes(k);
    for (const p of words.slice(1)) {
        const [key, v] = p.split("=");
        if (key === "static_size_mb" && v) sizes = v.split(",").filter(Boolean).map(Number);
    }
    if (sizes.length > 10 || sizes.some((n) => !Number.isInteger(n) || n <= 0)) {
        return { code: 1, stderr: "modprobe: ERROR: could not insert 'kvmfr': Invalid argument" };
    }
    s.loaded = true;
    s.sizes = sizes;
    s.nodes = sizes.map((_, i) => udevApply(k, i));
    return { code: 0 };
}

const dir = (list: () => string[]): FakeNode => ({ kind: "dir", list });
const file = (read: () => string): FakeNode => ({ kind: "file", read, mode: 0o444 });

export const kvmfrSubsystem: FakeSubsystem = {
    resolve(k, path) {
        const s = kvmfr(k);
        if (!s.loaded) return undefined;
        const i = devIndex(path);
        if (i !== undefined) {
            // A regular file QEMU created before the module loaded hides the node (devtmpfs cannot replace it).
            if (k.state.files[path] || i >= s.sizes.length) return undefined;
            const n = s.nodes[i] ?? { uid: 0, gid: 0, mode: 0o600 };
            return { kind: "char", major: s.major, minor: i, mode: n.mode, uid: n.uid, gid: n.gid };
        }
        if (path === "/sys/module/kvmfr") return dir(() => ["parameters", "refcnt", "holders"]);
        if (path === "/sys/module/kvmfr/parameters" || path === "/sys/module/kvmfr/holders") return dir(() => []);
        if (path === "/sys/module/kvmfr/refcnt") return file(() => `${anyOpen(k).length}\n`);
        if (path === "/sys/class/kvmfr") return dir(() => s.sizes.map((_, n) => `kvmfr${n}`));
        const c = /^\/sys\/class\/kvmfr\/kvmfr(\d)(?:\/(dev))?$/.exec(path);
        if (c && Number(c[1]) < s.sizes.length) return c[2] ? file(() => `${s.major}:${c[1]}\n`) : dir(() => ["dev"]);
        return undefined;
    },
    extraEntries(k, d) {
        const s = kvmfr(k);
        if (!s.loaded) return [];
        if (d === "/dev") return s.sizes.map((_, i) => `kvmfr${i}`);
        if (d === "/sys/class") return ["kvmfr"];
        if (d === "/sys/module") return ["kvmfr"];
        return [];
    },
    exec(k, argv) {
        const [cmd, ...rest] = argv;
        if (cmd === "modprobe") return modprobe(k, rest);
        if (cmd === "getent" && (rest[0] === "passwd" || rest[0] === "group") && rest.length === 2) {
            const acc = accounts(k);
            const table = rest[0] === "passwd" ? acc.users : acc.groups;
            const id = table[rest[1]];
            if (id === undefined) return { code: 2 };
            return { code: 0, stdout: rest[0] === "passwd" ? `${rest[1]}:x:${id}:${id}::/home/${rest[1]}:/bin/bash\n` : `${rest[1]}:x:${id}:\n` };
        }
        if ((cmd === "chown" || cmd === "chmod") && rest.length === 2 && devIndex(rest[1]) !== undefined) {
            const s = kvmfr(k);
            const i = devIndex(rest[1])!;
            if (!s.loaded || i >= s.sizes.length || k.state.files[rest[1]]) return undefined;
            const n = s.nodes[i];
            if (cmd === "chmod") {
                n.mode = parseInt(rest[0], 8);
                return { code: 0 };
            }
            const [owner, group] = rest[0].split(":");
            const acc = accounts(k);
            if (acc.users[owner] === undefined) return { code: 1, stderr: `chown: invalid user: '${rest[0]}'` };
            if (group && acc.groups[group] === undefined) return { code: 1, stderr: `chown: invalid group: '${rest[0]}'` };
            n.uid = acc.users[owner];
            if (group) n.gid = acc.groups[group];
            return { code: 0 };
        }
        if (cmd === "udevadm") {
            if (rest[0] === "trigger") {
                const s = kvmfr(k);
                if (s.loaded) s.nodes = s.sizes.map((_, i) => udevApply(k, i));
            }
            return { code: 0 };
        }
        return undefined;
    },
};

/** Attach to a kernel (see extraSubsystems in lab.ts); first, so `modprobe kvmfr` is answered here, not by PCI. */
export function addKvmfr(k: FakeKernel): void {
    k.use(kvmfrSubsystem, { first: true });
    for (const d of ["/dev", "/dev/shm", "/etc/modprobe.d", "/etc/modules-load.d", "/etc/udev/rules.d", "/run"]) if (!k.state.dirs.includes(d)) k.state.dirs.push(d);
}
