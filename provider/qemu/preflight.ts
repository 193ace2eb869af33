/**
 * What a PassthroughVm needs from its host that no other resource of the same `pulumi up` provides, so `check` can
 * refuse it at `pulumi preview`, before the up binds a GPU away from the host only to fail at QEMU's start:
 * the QEMU binary, /dev/kvm (accel kvm), the OVMF files, each disk, cdrom and ROM file, the hugetlbfs and enough free
 * hugepages of its page size, the bridge (mode bridge) and qemu-bridge-helper's ACL. (Device bindings, mdevs and
 * kvmfr devices can be made by other resources of the same up, so they stay in create's preflight.)
 *
 * The reads are ops appended to the batch that check and create already send ({@link envOps}), so the preflight
 * costs no round trip of its own; parsing and judging are pure ({@link parseEnv}, {@link envProblems}).
 */
import type { CheckFailure } from "../check";
import type { Op, OpResult } from "../host/types";
import { QEMU_BINARY } from "./cmdline";

/** What the VM's inputs ask of the host, each path with the input field that names it. */
export interface PreflightWant {
    accel: "kvm" | "tcg";
    memoryMb: number;
    hugepages: boolean;
    /** OVMF code, VARS template, and the per-VM VARS copy (an existing copy is used instead of the template). */
    firmware?: { code: string; vars: string; copy: string };
    /** `disks[0]` for the string form, `disks[0].path` for the object form. */
    disks: { path: string; field: string }[];
    cdrom?: string;
    romfiles: { path: string; field: string }[];
    /** The host bridge of network mode `bridge`. */
    bridge?: string;
    /**
     * libvirt's `<emulator>` (backend libvirt): libvirt runs QEMU, so its path is checked with a stat instead of
     * running `qemu-system-x86_64 --version` on our PATH. Unset: the QEMU backend's check.
     */
    emulator?: string;
    /**
     * The bridge is reached through qemu-bridge-helper, whose ACL is /etc/qemu/bridge.conf (the QEMU backend).
     * libvirt's system daemon creates and attaches the tap device itself (formatdomain, "Bridge to LAN"), so
     * bridge.conf does not apply to a libvirt domain. Default true.
     */
    bridgeHelper?: boolean;
}

export type NodeKind = "file" | "dir" | "char" | "block" | "other" | "absent";

export interface HostEnv {
    nodes: Map<string, NodeKind>;
    /** `qemu-system-x86_64 --version` ran (its first line), or why not. */
    qemu: { ok: true; version: string } | { ok: false; missing: boolean; message: string };
    /** Page size in kB of the hugetlbfs mounted at /dev/hugepages, or null when none is (absent from /proc/mounts). */
    hugetlbfsPageKb: number | null;
    /** Pages a new mapping can take, per page size in kB: free_hugepages − resv_hugepages. */
    hugepagesAvailable: Map<number, number>;
    /** /etc/qemu/bridge.conf's text, or null when absent. Read only in bridge mode. */
    bridgeConf: string | null;
}

/** x86-64's hugepage sizes, 2 MiB and 1 GiB (Documentation/admin-guide/mm/hugetlbpage.rst). */
export const HUGEPAGE_SIZES_KB = [2048, 1048576] as const;
export const HUGETLBFS = "/dev/hugepages";
/** qemu-bridge-helper's default ACL (qemu-bridge-helper.c: CONFIG_QEMU_CONFDIR "/bridge.conf"; /etc/qemu on Debian). */
export const BRIDGE_CONF = "/etc/qemu/bridge.conf";
/** Linux interface names (net/core/dev.c dev_valid_name): at most 15 bytes, no '/', not "." or "..". */
const IFNAME = /^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}$/;

const hugepageFile = (kb: number, what: "free" | "resv") => `/sys/kernel/mm/hugepages/hugepages-${kb}kB/${what}_hugepages`;

function statPaths(w: PreflightWant): string[] {
    const p = [...(w.firmware ? [w.firmware.code, w.firmware.vars, w.firmware.copy] : []), ...w.disks.map((d) => d.path), ...(w.cdrom ? [w.cdrom] : []), ...w.romfiles.map((r) => r.path)];
    if (w.accel === "kvm") p.push("/dev/kvm");
    if (w.bridge !== undefined && IFNAME.test(w.bridge)) p.push(`/sys/class/net/${w.bridge}/bridge`);
    if (w.emulator) p.push(w.emulator);
    return [...new Set(p)];
}

/**
 * The reads, to append to a batch: stats, `qemu-system-x86_64 --version` (resolved on PATH as the start will be;
 * it changes nothing), and, with hugepages, /proc/mounts and both pools' counters (the page size is known only
 * from /proc/mounts, so both are read rather than spending a second round trip).
 */
export function envOps(w: PreflightWant): Op[] {
    const ops: Op[] = statPaths(w).map((path): Op => ({ op: "stat", path }));
    if (!w.emulator) ops.push({ op: "exec", argv: [QEMU_BINARY, "--version"], optional: true, timeoutMs: 20_000 });
    if (w.hugepages) {
        ops.push({ op: "read", path: "/proc/mounts" });
        for (const kb of HUGEPAGE_SIZES_KB) ops.push({ op: "read", path: hugepageFile(kb, "free") }, { op: "read", path: hugepageFile(kb, "resv") });
    }
    if (w.bridge !== undefined && w.bridgeHelper !== false) ops.push({ op: "read", path: BRIDGE_CONF });
    return ops;
}

/** `stat -L -c %F` → kind ("regular empty file" included). */
export function statKind(r: OpResult): NodeKind {
    if (!r.ok) return "absent";
    const t = r.data.trim();
    if (t.startsWith("regular")) return "file";
    if (t.startsWith("directory")) return "dir";
    if (t.startsWith("character")) return "char";
    if (t.startsWith("block")) return "block";
    return "other";
}

/** The page size of the hugetlbfs at /dev/hugepages from /proc/mounts (`pagesize=2M`, `1024M`, `1G`), in kB. */
export function hugetlbfsPageKb(mounts: string): number | null {
    for (const line of mounts.split("\n")) {
        const [, dir, type, opts] = line.split(" ");
        if (dir !== HUGETLBFS || type !== "hugetlbfs") continue;
        // hugetlbfs_show_options (fs/hugetlbfs/inode.c) always prints pagesize=; without it, the default 2 MiB.
        const m = /(?:^|,)pagesize=(\d+)([KMG])/.exec(opts ?? "");
        if (!m) return 2048;
        return Number(m[1]) * { K: 1, M: 1024, G: 1024 * 1024 }[m[2] as "K" | "M" | "G"];
    }
    return null;
}

/** Parse the answers of {@link envOps} (the same `w`, the results in the same order). Pure. */
export function parseEnv(w: PreflightWant, r: OpResult[]): HostEnv {
    let at = 0;
    const nodes = new Map<string, NodeKind>();
    for (const p of statPaths(w)) nodes.set(p, statKind(r[at++]));
    let qemu: HostEnv["qemu"];
    if (w.emulator) {
        const k = nodes.get(w.emulator);
        qemu = k === "file" ? { ok: true, version: "" } : { ok: false, missing: true, message: `libvirt's emulator ${w.emulator} ${k === "absent" ? "does not exist" : "is not a file"}` };
    } else {
        const x = r[at++];
        const message = (x.message ?? "").replace(/ \| /g, "; ").trim();
        qemu = x.ok ? { ok: true, version: x.data.split("\n")[0].trim() } : { ok: false, missing: x.code === 127, message };
    }
    let pageKb: number | null = null;
    const available = new Map<number, number>();
    if (w.hugepages) {
        const mounts = r[at++];
        pageKb = mounts.ok ? hugetlbfsPageKb(mounts.data) : null;
        for (const kb of HUGEPAGE_SIZES_KB) {
            const free = r[at++];
            const resv = r[at++];
            if (free.ok) available.set(kb, Number(free.data.trim()) - (resv.ok ? Number(resv.data.trim()) : 0));
        }
    }
    let bridgeConf: string | null = null;
    if (w.bridge !== undefined && w.bridgeHelper !== false) {
        const c = r[at++];
        bridgeConf = c.ok ? c.data : null;
    }
    return { nodes, qemu, hugetlbfsPageKb: pageKb, hugepagesAvailable: available, bridgeConf };
}

/**
 * Whether qemu-bridge-helper lets a VM onto `bridge` by its ACL text: rules are `allow NAME|all`, `deny NAME|all`
 * and `include FILE`; any matching deny wins, else a matching allow is needed, default deny (qemu-bridge-helper.c).
 * `undefined` when the answer depends on an included file this read did not follow.
 */
export function bridgeAllowed(conf: string, bridge: string): boolean | undefined {
    let allowed = false;
    let includes = false;
    for (const raw of conf.split("\n")) {
        const line = raw.replace(/#.*/, "").trim();
        if (!line) continue;
        const [cmd, arg] = line.split(/\s+/);
        if (cmd === "deny" && (arg === "all" || arg === bridge)) return false;
        if (cmd === "allow" && (arg === "all" || arg === bridge)) allowed = true;
        if (cmd === "include") includes = true;
    }
    return allowed && !includes ? true : includes ? undefined : false;
}

const OVMF_HINT = "(Debian/Ubuntu: apt install ovmf → /usr/share/OVMF/OVMF_CODE_4M.fd and OVMF_VARS_4M.fd; Fedora: edk2-ovmf → /usr/share/edk2/ovmf/)";

function describe(kind: NodeKind | undefined): string {
    return kind === "absent" || kind === undefined ? "does not exist" : kind === "dir" ? "is a directory" : kind === "char" ? "is a character device" : kind === "block" ? "is a block device" : "is not a regular file";
}

/**
 * Every readable reason QEMU would not start, each naming the input field and the fix. Pure.
 * `heldHugepagesMb`: hugepage memory held by this VM's own running QEMU, freed before the new one starts (an update).
 */
export function envProblems(w: PreflightWant, env: HostEnv, heldHugepagesMb = 0): CheckFailure[] {
    const out: CheckFailure[] = [];
    const fail = (property: string, reason: string) => out.push({ property, reason });
    const kind = (p: string) => env.nodes.get(p);

    if (!env.qemu.ok) {
        fail(
            "machine",
            w.emulator && !env.qemu.ok
                ? `${env.qemu.message}: libvirt could not start the domain (install qemu-system-x86 on Debian/Ubuntu, qemu-kvm on Fedora)`
                : env.qemu.missing
                ? `${QEMU_BINARY} is not installed on this host (not on the PATH pulumi-vfio runs with${env.qemu.message ? `: ${env.qemu.message}` : ""}): apt install qemu-system-x86 (Debian/Ubuntu) or dnf install qemu-kvm (Fedora)`
                : `${QEMU_BINARY} --version failed: ${env.qemu.message || "(no output)"}`,
        );
    }
    if (w.accel === "kvm") {
        const k = kind("/dev/kvm");
        if (k !== "char") {
            fail("accel", `/dev/kvm ${k === "absent" ? "does not exist" : "is not a character device"}: enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd (modprobe kvm_intel), or use accel: "tcg" (emulation, slow; no Hyper-V enlightenments)`);
        }
    }
    if (w.firmware) {
        const f = w.firmware;
        if (kind(f.code) !== "file") fail("firmware.code", `OVMF code ${f.code} ${describe(kind(f.code))} ${OVMF_HINT}`);
        // The template is only copied when the VM has no VARS of its own yet (its UEFI boot entries are kept).
        if (kind(f.copy) !== "file" && kind(f.vars) !== "file") fail("firmware.vars", `OVMF VARS template ${f.vars} ${describe(kind(f.vars))} ${OVMF_HINT}`);
    }
    for (const d of w.disks) {
        const k = kind(d.path);
        if (k !== "file" && k !== "block") fail(d.field, `disk ${d.path} ${describe(k)}: give an existing image file or block device (create one with qemu-img create -f qcow2 ${d.path} 64G)`);
    }
    if (w.cdrom) {
        const k = kind(w.cdrom);
        if (k !== "file" && k !== "block") fail("cdrom", `cdrom ${w.cdrom} ${describe(k)}: give an existing ISO image or optical drive`);
    }
    for (const r of w.romfiles) {
        if (kind(r.path) !== "file") fail(r.field, `ROM file ${r.path} ${describe(kind(r.path))} (QEMU: "failed to find romfile")`);
    }
    if (w.hugepages) {
        const pageKb = env.hugetlbfsPageKb;
        if (pageKb === null) {
            fail("hugepages", `${HUGETLBFS} is not a hugetlbfs mount (/proc/mounts): QEMU would back guest memory with ordinary pages there. Mount it (systemd's dev-hugepages.mount does at boot; or mount -t hugetlbfs -o pagesize=2M hugetlbfs ${HUGETLBFS}), or set hugepages: false`);
        } else if (w.memoryMb * 1024 < pageKb) {
            fail("memoryMb", `memoryMb ${w.memoryMb} is smaller than one ${pageKb / 1024} MiB hugepage of ${HUGETLBFS} (QEMU: "memory size ... must be equal to or larger than page size")`);
        } else {
            const need = Math.ceil((w.memoryMb * 1024) / pageKb);
            const credit = Math.ceil((heldHugepagesMb * 1024) / pageKb);
            const have = env.hugepagesAvailable.get(pageKb);
            if (have === undefined) {
                fail("hugepages", `the hugetlbfs at ${HUGETLBFS} uses ${pageKb} kB pages, which this kernel has no pool of (${hugepageFile(pageKb, "free")} is missing)`);
            } else if (have + credit < need) {
                const size = pageKb >= 1048576 ? `${pageKb / 1048576} GiB` : `${pageKb / 1024} MiB`;
                const howMore = pageKb >= 1048576 ? "1 GiB pages are reserved at boot: hugepagesz=1G hugepages=N on the kernel command line" : `echo N > /sys/kernel/mm/hugepages/hugepages-${pageKb}kB/nr_hugepages, or vm.nr_hugepages`;
                fail("hugepages", `memoryMb ${w.memoryMb} needs ${need} free ${size} hugepages (the page size of ${HUGETLBFS}) but ${Math.max(0, have)}${credit ? ` (+${credit} this VM holds now)` : ""} are free (${hugepageFile(pageKb, "free")} less resv_hugepages): reserve more (${howMore}), or set hugepages: false`);
            }
        }
    }
    if (w.bridge !== undefined) {
        if (!IFNAME.test(w.bridge)) fail("network.bridge", `${JSON.stringify(w.bridge)} is not a network interface name`);
        else if (kind(`/sys/class/net/${w.bridge}/bridge`) !== "dir") fail("network.bridge", `there is no bridge ${w.bridge} on this host (/sys/class/net/${w.bridge}/bridge): create it (ip link add ${w.bridge} type bridge, or in your network configuration)`);
        else if (w.bridgeHelper === false) {
            // libvirt attaches the tap itself: no qemu-bridge-helper ACL to satisfy.
        } else if (env.bridgeConf === null) fail("network.bridge", `${BRIDGE_CONF} does not exist, so qemu-bridge-helper denies every bridge ("access denied by acl file"): create it with the line "allow ${w.bridge}" (mode 0640)`);
        else if (bridgeAllowed(env.bridgeConf, w.bridge) === false) fail("network.bridge", `${BRIDGE_CONF} does not allow ${w.bridge} (qemu-bridge-helper: "access denied by acl file"): add the line "allow ${w.bridge}" (and no "deny" for it)`);
    }
    return out;
}
