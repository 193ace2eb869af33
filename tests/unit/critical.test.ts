/**
 * Host-critical functions (provider/sysfs/critical.ts): what the host uses, traced from mounts, swaps and the SSH
 * session to PCI addresses, and the classification a refusal quotes. Pure functions, fed the kernel's own text.
 */
import { spawnSync } from "child_process";
import { OpResult } from "../../provider/host/types";
import {
    HostUses,
    UseNode,
    followLinks,
    hostCriticalReason,
    hostUses,
    interfaceWithAddress,
    linkOps,
    parseCriticalReads,
    parseMountinfo,
    parseSshConnection,
    parseSwaps,
    pciAddressOfPath,
    SSH_SESSION_SCRIPT,
} from "../../provider/sysfs/critical";

const ok = (data: string): OpResult => ({ ok: true, data });
const no = (message = "No such file or directory"): OpResult => ({ ok: false, data: "", errno: "ENOENT", message });

/** `ip -o addr show` of the lab guest, as its iproute2 prints it. */
const LAB_IP = [
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever",
    "1: lo    inet6 ::1/128 scope host noprefixroute \\       valid_lft forever preferred_lft forever",
    "2: lab0    inet 10.0.2.15/24 brd 10.0.2.255 scope global lab0\\       valid_lft forever preferred_lft forever",
    "2: lab0    inet6 fe80::5054:ff:fe4c:4142/64 scope link \\       valid_lft forever preferred_lft forever",
    "5: vlan7@bond0    inet 192.168.7.2/24 scope global vlan7\\       valid_lft forever preferred_lft forever",
    "",
].join("\n");

describe("parseMountinfo", () => {
    test.each([
        ["the lab's root (a plain device)", "27 1 254:0 / / rw,noatime shared:1 - ext4 /dev/vda rw", [{ dev: "254:0", mountPoint: "/", fsType: "ext4", source: "/dev/vda" }]],
        ["a pseudo filesystem keeps its anonymous device number", "22 27 0:20 / /sys rw,nosuid - sysfs sysfs rw", [{ dev: "0:20", mountPoint: "/sys", fsType: "sysfs", source: "sysfs" }]],
        ["optional fields before the separator", "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:3 - ext3 /dev/root rw", [{ dev: "98:0", mountPoint: "/mnt2", fsType: "ext3", source: "/dev/root" }]],
        ["an escaped space in the mount point", "40 27 8:17 / /media/my\\040disk rw - vfat /dev/sdb1 rw", [{ dev: "8:17", mountPoint: "/media/my disk", fsType: "vfat", source: "/dev/sdb1" }]],
        ["garbage", "not a mountinfo line", []],
    ])("%s", (_what, text, expected) => {
        expect(parseMountinfo(text)).toEqual(expected);
    });
});

describe("parseSwaps", () => {
    test.each([
        ["no swap (the lab)", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n", []],
        ["a partition and a file", "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p3 partition\t8388604\t0\t-2\n/swapfile file\t1048572\t0\t-3\n", [
            { path: "/dev/nvme0n1p3", type: "partition" },
            { path: "/swapfile", type: "file" },
        ]],
    ])("%s", (_what, text, expected) => {
        expect(parseSwaps(text)).toEqual(expected);
    });
});

describe("SSH session and its interface", () => {
    test.each([
        ["the lab's session", "10.0.2.2 37578 10.0.2.15 22\n", { client: "10.0.2.2", clientPort: "37578", server: "10.0.2.15", serverPort: "22" }],
        ["IPv6", "2001:db8::5 50000 2001:db8::1 2222", { client: "2001:db8::5", clientPort: "50000", server: "2001:db8::1", serverPort: "2222" }],
        ["nothing (not over SSH)", "", null],
        ["malformed", "10.0.2.2 x 10.0.2.15 22", null],
    ])("%s", (_what, text, expected) => {
        expect(parseSshConnection(text)).toEqual(expected);
    });

    test.each([
        ["IPv4 on lab0", "10.0.2.15", "lab0"],
        ["IPv6 link-local", "fe80::5054:ff:fe4c:4142", "lab0"],
        ["a zone names the interface", "fe80::1%eth3", "eth3"],
        ["an IPv4-mapped IPv6 address", "::ffff:10.0.2.15", "lab0"],
        ["a VLAN's name without its @parent", "192.168.7.2", "vlan7"],
        ["an address no interface has", "10.9.9.9", null],
    ])("%s → %s", (_what, ip, expected) => {
        expect(interfaceWithAddress(LAB_IP, ip)).toBe(expected);
    });
});

describe("parseCriticalReads: what to follow through sysfs", () => {
    const mounts = ok("22 27 0:20 / /sys rw - sysfs sysfs rw\n27 1 254:0 / / rw,noatime shared:1 - ext4 /dev/vda rw\n45 27 0:44 / /home rw - btrfs /dev/sdb2 rw\n");
    test.each<[string, OpResult[], { uses: UseNode[]; unknown: RegExp[] }]>([
        [
            "the lab: root on 254:0, no swap, the session on lab0",
            [mounts, ok("Filename Type Size Used Priority\n"), ok("10.0.2.2 37578 10.0.2.15 22\n"), ok(LAB_IP)],
            {
                uses: [
                    { kind: "block", path: "/sys/dev/block/254:0", use: "holds the root filesystem / (ext4 on /dev/vda)" },
                    { kind: "block", path: "/sys/class/block/sdb2", use: "holds the filesystem mounted on /home (btrfs on /dev/sdb2)" },
                    { kind: "net", path: "/sys/class/net/lab0", use: "carries the SSH session we are connected over (10.0.2.2:37578 → 10.0.2.15:22 on lab0)" },
                ],
                unknown: [],
            },
        ],
        [
            "a swap partition; not over SSH",
            [ok(""), ok("Filename Type Size Used Priority\n/dev/sda3 partition 100 0 -2\n/swapfile file 100 0 -3\n"), ok(""), ok(LAB_IP)],
            { uses: [{ kind: "block", path: "/sys/class/block/sda3", use: "holds the active swap /dev/sda3" }], unknown: [] },
        ],
        [
            "over SSH without `ip`: the interface is unknown, and said so",
            [ok(""), ok(""), ok("10.0.2.2 1 10.0.2.15 22"), { ok: false, data: "", code: 127, message: "ip: command not found" }],
            { uses: [], unknown: [/the interface with 10.0.2.15 .* `ip -o addr show` failed \(ip: command not found\)/] },
        ],
        ["mountinfo unreadable", [no(), ok(""), ok(""), ok("")], { uses: [], unknown: [/\/proc\/self\/mountinfo could not be read/] }],
    ])("%s", (_what, results, expected) => {
        const r = parseCriticalReads(results);
        expect(r.uses).toEqual(expected.uses);
        expect(r.unknown).toHaveLength(expected.unknown.length);
        expected.unknown.forEach((re, i) => expect(r.unknown[i]).toMatch(re));
    });
});

describe("following links to the PCI function", () => {
    test.each([
        ["virtio-blk (the lab's /dev/vda)", "/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda", "0000:00:03.0"],
        ["virtio-net (the lab's lab0)", "/sys/devices/pci0000:00/0000:00:02.0/virtio0/net/lab0", "0000:00:02.0"],
        ["an NVMe namespace behind a root port: the controller, not the port", "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "0000:3d:00.0"],
        ["a SATA disk on AHCI", "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda", "0000:00:1f.2"],
        ["a USB disk: its host controller", "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc", "0000:00:14.0"],
        ["a virtual device", "/sys/devices/virtual/block/dm-0", null],
    ])("%s", (_what, path, expected) => {
        expect(pciAddressOfPath(path)).toBe(expected);
    });

    test("a device-mapper root is followed through slaves/; a bridge interface through lower_*; a broken link is reported", () => {
        const nodes: UseNode[] = [
            { kind: "block", path: "/sys/dev/block/253:0", use: "holds the root filesystem / (ext4 on /dev/mapper/vg-root)" },
            { kind: "net", path: "/sys/class/net/br0", use: "carries the SSH session" },
            { kind: "block", path: "/sys/class/block/gone", use: "holds the active swap /dev/gone" },
        ];
        expect(linkOps(nodes).map((o) => `${o.op} ${"path" in o ? o.path : ""}`)).toEqual([
            "readlink /sys/dev/block/253:0",
            "list /sys/dev/block/253:0/slaves",
            "list /sys/dev/block/253:0/multipath",
            "readlink /sys/class/net/br0",
            "list /sys/class/net/br0",
            "readlink /sys/class/block/gone",
            "list /sys/class/block/gone/slaves",
            "list /sys/class/block/gone/multipath",
        ]);
        const step = followLinks(nodes, [
            ok("/sys/devices/virtual/block/dm-0"),
            ok("nvme0n1p2\n"),
            no(),
            ok("/sys/devices/virtual/net/br0"),
            ok("address\nbridge\nlower_enp5s0\nlower_vnet0\n"),
            { ok: false, data: "", errno: "EINVAL", message: "not a link" },
            no(),
            no(),
        ]);
        expect(step.found).toEqual([]);
        expect(step.next).toEqual([
            { kind: "block", path: "/sys/dev/block/253:0/slaves/nvme0n1p2", use: nodes[0].use },
            { kind: "net", path: "/sys/class/net/br0/lower_enp5s0", use: nodes[1].use },
            { kind: "net", path: "/sys/class/net/br0/lower_vnet0", use: nodes[1].use },
        ]);
        expect(step.unknown).toEqual(["/sys/class/block/gone could not be followed (not a link): the PCI device that holds the active swap /dev/gone is unknown"]);
        const down = followLinks(step.next, [ok("/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1/nvme0n1p2"), no(), no(), ok("/sys/devices/pci0000:00/0000:00:1c.0/0000:05:00.0/net/enp5s0"), ok(""), ok("/sys/devices/virtual/net/vnet0"), ok("")]);
        expect(down.found).toEqual([
            { address: "0000:3d:00.0", use: nodes[0].use },
            { address: "0000:05:00.0", use: nodes[1].use },
        ]);
        expect(down.next).toEqual([]);
    });
});

describe("hostCriticalReason", () => {
    const uses: HostUses = hostUses(
        [
            { address: "0000:00:03.0", use: "holds the root filesystem / (ext4 on /dev/vda)" },
            { address: "0000:00:03.0", use: "holds the active swap /dev/vda2" },
            { address: "0000:00:02.0", use: "carries the SSH session we are connected over (10.0.2.2:1 → 10.0.2.15:22 on lab0)" },
        ],
        { client: "10.0.2.2", clientPort: "1", server: "10.0.2.15", serverPort: "22", interface: "lab0" },
        [],
    );
    const lost: HostUses = hostUses([], { client: "10.0.2.2", clientPort: "1", server: "10.0.2.15", serverPort: "22", interface: null }, ["`ip -o addr show` failed"]);
    test.each<[string, string, string, HostUses | null, RegExp | null]>([
        ["a host bridge", "0000:00:00.0", "060000", null, /^is a host bridge \(class 0600\)/],
        ["the ICH9 LPC (ISA bridge)", "0000:00:1f.0", "060100", uses, /^is the ISA\/LPC bridge \(class 0601\): the chipset's legacy bus/],
        ["the ICH9 SMBus", "0000:00:1f.3", "0c0500", uses, /^is the SMBus controller \(class 0c05\)/],
        ["the disk controller of / and swap", "0000:00:03.0", "010000", uses, /^holds the root filesystem \/ \(ext4 on \/dev\/vda\) and holds the active swap \/dev\/vda2$/],
        ["the SSH session's NIC", "0000:00:02.0", "020000", uses, /^carries the SSH session we are connected over \(10\.0\.2\.2:1 → 10\.0\.2\.15:22 on lab0\)$/],
        ["an AHCI controller with nothing mounted", "0000:00:1f.2", "010601", uses, null],
        ["a GPU", "0000:01:00.0", "030000", uses, null],
        ["a PCI bridge (left on pcieport, not critical)", "0000:00:10.0", "060400", uses, null],
        ["any NIC while the session's interface is unknown", "0000:05:00.0", "020000", lost, /^is a network controller .* may carry the SSH session .*`ip -o addr show` failed/],
        ["not a NIC while the session's interface is unknown", "0000:01:00.0", "030000", lost, null],
        ["the uses unread: only the class counts", "0000:00:03.0", "010000", null, null],
    ])("%s", (_what, address, cls, u, expected) => {
        const r = hostCriticalReason({ address, class: cls }, u);
        if (expected === null) expect(r).toBeNull();
        else expect(r).toMatch(expected);
    });
});

describe("the SSH session script, run by bash as the interpreter would", () => {
    const run = (env: Record<string, string>, outer: string) =>
        spawnSync("bash", ["-c", outer, "outer", SSH_SESSION_SCRIPT], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env }, encoding: "utf8", timeout: 10_000 });

    test("finds SSH_CONNECTION in an ancestor when sudo-like env stripping left the script without it", () => {
        // The outer bash plays sshd's session shell; `env -i` plays sudo's env_reset for the interpreter it starts.
        const r = run({ SSH_CONNECTION: "192.0.2.7 50123 192.0.2.1 22" }, 'env -i PATH="$PATH" bash -c "$1" ssh-session; exit $?');
        expect(r.status).toBe(0);
        expect(r.stdout).toBe("192.0.2.7 50123 192.0.2.1 22\n");
    });

    test("prints nothing, successfully, when no ancestor was reached over SSH", () => {
        const r = run({}, 'env -i PATH="$PATH" bash -c "$1" ssh-session; exit $?');
        // The walk goes on past the outer bash to this test's own ancestors: inside an SSH login it rightly finds that.
        expect(r.stdout).toMatch(/^(|\S+ \d+ \S+ \d+\n)$/);
        expect(r.stdout).not.toContain("192.0.2.7");
        expect(r.status).toBe(0);
    });
});
