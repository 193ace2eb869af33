/**
 * Host-critical PCI functions: the ones a host cannot lose to vfio-pci without losing itself. Binding an IOMMU group
 * moves every member, so one group that holds the chipset (on the lab's q35 and on many boards the LPC/ISA bridge,
 * the SATA controller and the SMBus share a group) takes the host's disks, firmware interfaces and sensors with it.
 *
 * What makes a function host-critical, and where each fact comes from:
 * - by class (`class` attribute, PCI Code and ID Assignment spec): host bridge `0600` (the root complex), ISA/LPC
 *   bridge `0601` (the legacy bus behind it: keyboard controller, RTC, TPM, firmware flash, watchdog), SMBus `0c05`
 *   (SPD, sensors, clock chips);
 * - by use, as the kernel shows it:
 *   - it holds a mounted filesystem or an active swap: `/proc/self/mountinfo` gives each mount's block device as
 *     `major:minor` (field 3; a mount of a device-less filesystem has major 0), `/proc/swaps` each swap's path; the
 *     block device's sysfs directory `/sys/dev/block/<major>:<minor>` (or `/sys/class/block/<name>`) is a link into
 *     `/sys/devices/pci…/<BDF>/…`, whose last PCI address is the controller (virtio-blk, NVMe, AHCI, a USB host
 *     controller). A stacked device (device-mapper, md, an NVMe multipath head) lives under `/sys/devices/virtual`
 *     and names what it is built on in `slaves/` (dm, md) or `multipath/` (NVMe), followed down to a PCI device;
 *   - it carries the SSH session the provider reaches the host over: sshd puts `SSH_CONNECTION` ("client-ip
 *     client-port server-ip server-port", sshd(8) ENVIRONMENT) in the session's environment; a constant script
 *     finds it in the nearest ancestor of the batch interpreter that has it (sudo drops it from its child's
 *     environment, not from its own), `ip -o addr show` names the interface that has the server-side address,
 *     and `/sys/class/net/<if>` links into the NIC's PCI directory (bridges, bonds and VLANs through `lower_*`).
 *     Run locally from an SSH login on the host, the same walk finds that login's session.
 *
 * Reading is split in two steps so that both ride on batches the caller already makes: {@link criticalReadOps}
 * need no names, {@link linkOps} follow the names they gave. Everything else here is pure.
 */
import { BatchQuery } from "../host/query";
import { Host, Op, OpResult } from "../host/types";
import { PciDevice, classLabel } from "./pci";

export const MOUNTINFO = "/proc/self/mountinfo";
export const SWAPS = "/proc/swaps";

/**
 * Prints the `SSH_CONNECTION` of the nearest process, from the script itself up to PID 1, whose environment has it;
 * prints nothing when none has (not reached over SSH). Constant text, run with an argv: nothing in it comes from input.
 */
export const SSH_SESSION_SCRIPT = [
    "p=$$",
    'while [ "$p" -gt 1 ] 2>/dev/null; do',
    "  while IFS= read -r -d '' v; do",
    '    case $v in SSH_CONNECTION=*) printf \'%s\\n\' "${v#SSH_CONNECTION=}"; exit 0 ;; esac',
    '  done < "/proc/$p/environ"',
    "  q=",
    '  while read -r k v; do [ "$k" = PPid: ] && q=$v; done < "/proc/$p/status"',
    '  p=${q:-0}',
    "done 2>/dev/null",
    "exit 0",
].join("\n");

export const SSH_SESSION_ARGV = ["bash", "-c", SSH_SESSION_SCRIPT, "pulumi-vfio-ssh-session"];
export const IP_ADDR_ARGV = ["ip", "-o", "addr", "show"];

/** The first step: no names needed. Parse its results with {@link parseCriticalReads}. */
export function criticalReadOps(): Op[] {
    return [
        { op: "read", path: MOUNTINFO },
        { op: "read", path: SWAPS },
        { op: "exec", argv: SSH_SESSION_ARGV, optional: true, timeoutMs: 10_000 },
        { op: "exec", argv: IP_ADDR_ARGV, optional: true, timeoutMs: 10_000 },
    ];
}

/** Something the host is using, to be followed through sysfs to the PCI function that provides it. */
export interface UseNode {
    kind: "block" | "net";
    /** A sysfs path that is (or leads through links to) the block device's or interface's directory. */
    path: string;
    /** What the device that provides it does for the host, as the refusal says it: `holds the root filesystem / (ext4 on /dev/vda)`. */
    use: string;
}

export interface SshSession {
    client: string;
    clientPort: string;
    server: string;
    serverPort: string;
    /** The interface with the server-side address, null when `ip` did not say. */
    interface: string | null;
}

export interface CriticalReads {
    uses: UseNode[];
    session: SshSession | null;
    /** Why some use could not be followed (shown with a refusal it may explain). */
    unknown: string[];
}

const SAFE_NAME = /^[A-Za-z0-9_@+,:=.-]+$/;
const safeName = (n: string) => SAFE_NAME.test(n) && n !== "." && n !== "..";
/** mountinfo escapes space, tab, newline and backslash as octal (`\040`). */
const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));

/** Mounts backed by a block device: `major:minor`, mount point, filesystem type and source, from mountinfo text. */
export function parseMountinfo(text: string): { dev: string; mountPoint: string; fsType: string; source: string }[] {
    const out: { dev: string; mountPoint: string; fsType: string; source: string }[] = [];
    for (const line of text.split("\n")) {
        const f = line.trim().split(" ");
        const sep = f.indexOf("-", 6);
        if (f.length < 10 || sep < 0 || !/^\d+:\d+$/.test(f[2])) continue;
        out.push({ dev: f[2], mountPoint: unescape(f[4]), fsType: f[sep + 1], source: unescape(f[sep + 2] ?? "") });
    }
    return out;
}

/** Active swap areas (`/proc/swaps`): path and type (`partition` or `file`). */
export function parseSwaps(text: string): { path: string; type: string }[] {
    return text
        .split("\n")
        .slice(1)
        .map((l) => l.trim().split(/\s+/))
        .filter((f) => f.length >= 2 && f[0].startsWith("/"))
        .map((f) => ({ path: unescape(f[0]), type: f[1] }));
}

/** `client-ip client-port server-ip server-port` (sshd(8)), null when absent or malformed. */
export function parseSshConnection(text: string): Omit<SshSession, "interface"> | null {
    const f = text.trim().split("\n")[0]?.trim().split(/\s+/) ?? [];
    if (f.length !== 4 || !/^\d+$/.test(f[1]) || !/^\d+$/.test(f[3])) return null;
    return { client: f[0], clientPort: f[1], server: f[2], serverPort: f[3] };
}

/** The interface `ip -o addr show` lists with address `ip` (an IPv6 zone `%if` names it directly). */
export function interfaceWithAddress(ipOutput: string, ip: string): string | null {
    const [addr, zone] = ip.split("%");
    if (zone && safeName(zone)) return zone;
    const want = addr.toLowerCase().replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
    for (const line of ipOutput.split("\n")) {
        const m = /^\d+:\s+(\S+?)(?:@\S+)?\s+inet6?\s+([0-9a-fA-F:.]+)\//.exec(line);
        if (m && m[2].toLowerCase() === want && safeName(m[1])) return m[1];
    }
    return null;
}

/** What the first step found: the block devices behind mounts and swaps, and the SSH session's interface. */
export function parseCriticalReads(r: OpResult[]): CriticalReads {
    const [mounts, swaps, session, ip] = r;
    const uses: UseNode[] = [];
    const unknown: string[] = [];
    if (mounts?.ok) {
        for (const m of parseMountinfo(mounts.data)) {
            const what = m.mountPoint === "/" ? "the root filesystem /" : `the filesystem mounted on ${m.mountPoint}`;
            const use = `holds ${what} (${m.fsType} on ${m.source})`;
            const [major] = m.dev.split(":");
            if (major !== "0") uses.push({ kind: "block", path: `/sys/dev/block/${m.dev}`, use });
            else if (m.source.startsWith("/dev/") && safeName(m.source.slice(5)) && !m.source.slice(5).includes("/")) {
                // btrfs and a few others report an anonymous device number; their source still names the device.
                uses.push({ kind: "block", path: `/sys/class/block/${m.source.slice(5)}`, use });
            }
        }
    } else unknown.push(`${MOUNTINFO} could not be read (${mounts?.message ?? "no answer"})`);
    if (swaps?.ok) {
        for (const s of parseSwaps(swaps.data)) {
            const name = s.path.slice(s.path.lastIndexOf("/") + 1);
            // A swap file lives on a mounted filesystem, which is followed already.
            if (s.type === "partition" && s.path.startsWith("/dev/") && safeName(name)) uses.push({ kind: "block", path: `/sys/class/block/${name}`, use: `holds the active swap ${s.path}` });
        }
    }
    let ssh: SshSession | null = null;
    const conn = session?.ok ? parseSshConnection(session.data) : null;
    if (conn) {
        const iface = ip?.ok ? interfaceWithAddress(ip.data, conn.server) : null;
        ssh = { ...conn, interface: iface };
        const use = `carries the SSH session we are connected over (${conn.client}:${conn.clientPort} → ${conn.server}:${conn.serverPort}${iface ? ` on ${iface}` : ""})`;
        if (iface) uses.push({ kind: "net", path: `/sys/class/net/${iface}`, use });
        else unknown.push(`the interface with ${conn.server} (the SSH session's address) was not found: ${ip?.ok ? "`ip -o addr show` does not list it" : `\`ip -o addr show\` failed (${ip?.message ?? "no answer"})`}`);
    }
    return { uses, session: ssh, unknown };
}

// ------------------------------------------------------------------------------------------------ following links

const BDF_COMPONENT = /^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/;

/** The PCI function a sysfs device path belongs to: its last PCI address component, or null (a virtual device). */
export function pciAddressOfPath(path: string): string | null {
    const parts = path.split("/").filter((p) => BDF_COMPONENT.test(p));
    return parts.length ? parts[parts.length - 1] : null;
}

/** Per node: where its link leads, and what it is built on (block: `slaves`, `multipath`; net: its `lower_*` entries). */
export function linkOps(nodes: UseNode[]): Op[] {
    return nodes.flatMap(nodeOps);
}

function nodeOps(n: UseNode): Op[] {
    return n.kind === "block"
        ? [
              { op: "readlink", path: n.path },
              { op: "list", path: `${n.path}/slaves` },
              { op: "list", path: `${n.path}/multipath` },
          ]
        : [
              { op: "readlink", path: n.path },
              { op: "list", path: n.path },
          ];
}

type LinkStep = { found: { address: string; use: string }[]; next: UseNode[]; unknown: string[] };

/**
 * One step down: the PCI functions the nodes resolved to, and the nodes still to follow (what a virtual device is
 * built on), from the results of {@link linkOps}. A node whose link cannot be read is reported in `unknown`.
 */
export function followLinks(nodes: UseNode[], r: OpResult[]): LinkStep {
    const names = (x: OpResult | undefined) => (x?.ok ? x.data.split("\n").filter(safeName) : []);
    const q = new BatchQuery();
    const steps = q.each(nodes, nodeOps, (n, [link, a, b]): LinkStep => {
        const target = link?.ok ? link.data.trim() : "";
        const address = pciAddressOfPath(target);
        if (address) return { found: [{ address, use: n.use }], next: [], unknown: [] };
        if (!target) return { found: [], next: [], unknown: [`${n.path} could not be followed (${link?.message ?? "no answer"}): the PCI device that ${n.use} is unknown`] };
        const next: UseNode[] =
            n.kind === "block"
                ? [...names(a).map((x): UseNode => ({ kind: "block", path: `${n.path}/slaves/${x}`, use: n.use })), ...names(b).map((x): UseNode => ({ kind: "block", path: `${n.path}/multipath/${x}`, use: n.use }))]
                : names(a)
                      .filter((e) => e.startsWith("lower_"))
                      .map((x): UseNode => ({ kind: "net", path: `${n.path}/${x}`, use: n.use }));
        return { found: [], next, unknown: [] };
    })(r);
    return { found: steps.flatMap((x) => x.found), next: steps.flatMap((x) => x.next), unknown: steps.flatMap((x) => x.unknown) };
}

/** How deep stacked devices are followed (LVM on LUKS on md on a partition is 3). */
export const MAX_LINK_DEPTH = 4;

// ------------------------------------------------------------------------------------------------ classifying

/** What the host uses, by PCI address, and what could not be traced. */
export interface HostUses {
    /** PCI address → what it does for the host (`holds the root filesystem / (ext4 on /dev/vda)`). */
    byAddress: Map<string, string[]>;
    session: SshSession | null;
    unknown: string[];
}

export function hostUses(found: { address: string; use: string }[], session: SshSession | null, unknown: string[]): HostUses {
    const byAddress = new Map<string, string[]>();
    for (const f of found) {
        const list = byAddress.get(f.address) ?? [];
        if (!list.includes(f.use)) list.push(f.use);
        byAddress.set(f.address, list);
    }
    return { byAddress, session, unknown };
}

/**
 * Follow the uses of `reads` to PCI functions, given the results of `linkOps(reads.uses)` (run by the caller in a
 * batch it makes anyway); a level of stacked devices below that costs one round trip, at most {@link MAX_LINK_DEPTH}.
 */
export async function traceUses(host: Host, reads: CriticalReads, firstStep: OpResult[]): Promise<HostUses> {
    const found: { address: string; use: string }[] = [];
    const unknown = [...reads.unknown];
    let nodes = reads.uses;
    let r = firstStep;
    for (let depth = 0; nodes.length; depth++) {
        const step = followLinks(nodes, r);
        found.push(...step.found);
        unknown.push(...step.unknown);
        nodes = step.next;
        if (!nodes.length) break;
        if (depth + 1 >= MAX_LINK_DEPTH) {
            unknown.push(`stacked block devices deeper than ${MAX_LINK_DEPTH} levels were not followed (${nodes.map((n) => n.path).join(", ")})`);
            break;
        }
        r = await host.run(linkOps(nodes));
    }
    return hostUses(found, reads.session, unknown);
}

const BY_CLASS: Record<string, string> = {
    "0600": "a host bridge (class 0600): the root complex the host's PCI bus hangs from",
    "0601": "the ISA/LPC bridge (class 0601): the chipset's legacy bus, with the keyboard controller, RTC, TPM, firmware flash and watchdog behind it",
    "0c05": "the SMBus controller (class 0c05): the host reads its memory SPD, sensors and clock chips through it",
};

/**
 * Why the host cannot give `d` away, or null when it can. `uses` null: the uses were not read (only the class counts).
 * A network controller is also refused while the SSH session's interface is unknown: it may be the one.
 */
export function hostCriticalReason(d: Pick<PciDevice, "address" | "class">, uses: HostUses | null): string | null {
    const byClass = BY_CLASS[d.class.slice(0, 4)];
    if (byClass) return `is ${byClass}`;
    const used = uses?.byAddress.get(d.address);
    if (used?.length) return used.join(" and ");
    if (uses?.session && !uses.session.interface && d.class.startsWith("02")) {
        return `is a network controller (${classLabel(d.class)}) and may carry the SSH session we are connected over (${uses.session.client} → ${uses.session.server}): ${uses.unknown.join("; ")}`;
    }
    return null;
}
