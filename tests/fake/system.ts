/**
 * The fake kernel's view of what the host itself uses, as provider/sysfs/critical.ts reads it: mounts
 * (`/proc/self/mountinfo`), swaps (`/proc/swaps`), block devices (`/sys/dev/block/<maj:min>`, `/sys/class/block/<name>`
 * links into the PCI tree, with `slaves/` for stacked ones), network interfaces (`/sys/class/net/<if>` links, with
 * `lower_*` for bridges and bonds), `ip -o addr show`, and the SSH session's `SSH_CONNECTION` that the session script
 * finds in the interpreter's ancestry. Shaped by the lab guest as seen on its kernel (see labSystemState).
 */
import { IP_ADDR_ARGV, SSH_SESSION_ARGV } from "../../provider/sysfs/critical";
import { FakeKernel, FakeNode, FakeSubsystem } from "./kernel";

export interface FakeBlockDevice {
    name: string;
    /** `major:minor`. */
    dev: string;
    /** Canonical sysfs directory, e.g. `/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda`. */
    path: string;
    /** Names of the block devices it is built on (dm, md). */
    slaves?: string[];
}

export interface FakeNetInterface {
    name: string;
    /** Canonical sysfs directory, e.g. `/sys/devices/pci0000:00/0000:00:02.0/virtio0/net/lab0`. */
    path: string;
    /** Interfaces it sits on (a bridge's or bond's ports): listed as `lower_<name>`. */
    lower?: string[];
    /** `inet`/`inet6` addresses with prefix, e.g. `10.0.2.15/24`. */
    addresses: string[];
}

export interface FakeSystemState {
    /** `/proc/self/mountinfo` text. */
    mountinfo: string;
    /** `/proc/swaps` text. */
    swaps: string;
    block: FakeBlockDevice[];
    net: FakeNetInterface[];
    /** What sshd put in the session's environment; null when the provider is not reached over SSH. */
    sshConnection: string | null;
    /** `ip` is missing: its exec fails as on a host without iproute2. */
    noIp?: boolean;
}

export function system(k: FakeKernel): FakeSystemState {
    return k.ext<FakeSystemState>("system", () => ({ mountinfo: "", swaps: SWAPS_HEADER, block: [], net: [], sshConnection: null }));
}

export const SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

/** The lab guest as its kernel shows it (kernel 6.1; see the contract suite): root ext4 on /dev/vda, no swap. */
export function labSystemState(): FakeSystemState {
    return {
        mountinfo: [
            "22 27 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw",
            "23 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
            "24 27 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=1480276k,nr_inodes=370069,mode=755,inode64",
            "26 27 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=297492k,mode=755,inode64",
            "27 1 254:0 / / rw,noatime shared:1 - ext4 /dev/vda rw",
            "29 24 0:24 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64",
            "35 24 0:30 / /dev/hugepages rw,relatime shared:14 - hugetlbfs hugetlbfs rw,pagesize=2M",
            "",
        ].join("\n"),
        swaps: SWAPS_HEADER,
        block: [
            { name: "vda", dev: "254:0", path: "/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda" },
            // The q35 machine's CD-ROM on the ICH9 AHCI controller: a block device, but nothing mounts it.
            { name: "sr0", dev: "11:0", path: "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sr0" },
            ...[0, 1, 2, 3, 4, 5, 6, 7].map((i) => ({ name: `loop${i}`, dev: `7:${i}`, path: `/sys/devices/virtual/block/loop${i}` })),
        ],
        // In ifindex order, as `ip` lists them: lo is 1.
        net: [
            { name: "lo", path: "/sys/devices/virtual/net/lo", addresses: ["127.0.0.1/8", "::1/128"] },
            { name: "lab0", path: "/sys/devices/pci0000:00/0000:00:02.0/virtio0/net/lab0", addresses: ["10.0.2.15/24", "fec0::5054:ff:fe4c:4142/64", "fe80::5054:ff:fe4c:4142/64"] },
        ],
        // QEMU user networking: the host side appears as 10.0.2.2, the guest's sshd listens on 10.0.2.15:22.
        sshConnection: "10.0.2.2 37578 10.0.2.15 22",
    };
}

const file = (data: string): FakeNode => ({ kind: "file", read: () => data, mode: 0o444 });
const dir = (list: () => string[]): FakeNode => ({ kind: "dir", list });
const link = (target: string): FakeNode => ({ kind: "link", target });

/** `ip -o addr show` as iproute2 prints it (one line per address, the rest after a `\`). */
function ipAddr(s: FakeSystemState): string {
    return s.net
        .flatMap((n, i) => n.addresses.map((a) => `${i + 1}: ${n.name}    ${a.includes(":") ? "inet6" : "inet"} ${a} scope global ${n.name}\\       valid_lft forever preferred_lft forever\n`))
        .join("");
}

export const systemSubsystem: FakeSubsystem = {
    resolve(k, path) {
        const s = system(k);
        if (path === "/proc/self/mountinfo") return file(s.mountinfo);
        if (path === "/proc/swaps") return file(s.swaps);
        if (path === "/sys/dev/block") return dir(() => s.block.map((b) => b.dev));
        if (path === "/sys/class/block") return dir(() => s.block.map((b) => b.name));
        if (path === "/sys/class/net") return dir(() => s.net.map((n) => n.name));
        const dev = /^\/sys\/dev\/block\/(\d+:\d+)$/.exec(path);
        if (dev) {
            const b = s.block.find((x) => x.dev === dev[1]);
            return b ? link(b.path) : undefined;
        }
        const cls = /^\/sys\/class\/(block|net)\/([^/]+)$/.exec(path);
        if (cls) {
            const target = cls[1] === "block" ? s.block.find((x) => x.name === cls[2])?.path : s.net.find((x) => x.name === cls[2])?.path;
            return target ? link(target) : undefined;
        }
        for (const b of s.block) {
            if (path === b.path) return dir(() => ["dev", "holders", "slaves", "size"]);
            if (path === `${b.path}/dev`) return file(b.dev + "\n");
            if (path === `${b.path}/holders`) return dir(() => s.block.filter((x) => x.slaves?.includes(b.name)).map((x) => x.name));
            if (path === `${b.path}/slaves`) return dir(() => b.slaves ?? []);
            const slave = b.slaves?.find((x) => path === `${b.path}/slaves/${x}`);
            if (slave) return link(s.block.find((x) => x.name === slave)?.path ?? `/sys/devices/virtual/block/${slave}`);
        }
        for (const n of s.net) {
            if (path === n.path) return dir(() => ["address", "ifindex", ...(n.lower ?? []).map((l) => `lower_${l}`), ...(n.path.includes("/virtual/") ? [] : ["device"])]);
            if (path === `${n.path}/ifindex`) return file(`${s.net.indexOf(n) + 1}\n`);
            if (path === `${n.path}/device` && !n.path.includes("/virtual/")) return link(n.path.replace(/\/net\/[^/]+$/, ""));
            const lower = n.lower?.find((l) => path === `${n.path}/lower_${l}`);
            if (lower) return link(s.net.find((x) => x.name === lower)?.path ?? `/sys/devices/virtual/net/${lower}`);
        }
        return undefined;
    },
    exec(k, argv) {
        const s = system(k);
        if (argv.length === SSH_SESSION_ARGV.length && argv.every((a, i) => a === SSH_SESSION_ARGV[i])) return { code: 0, stdout: s.sshConnection ? s.sshConnection + "\n" : "" };
        if (argv.length === IP_ADDR_ARGV.length && argv.every((a, i) => a === IP_ADDR_ARGV[i])) {
            return s.noIp ? { code: 127, stderr: "ip: command not found" } : { code: 0, stdout: ipAddr(s) };
        }
        return undefined;
    },
};
