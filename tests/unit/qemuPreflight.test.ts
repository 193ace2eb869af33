/**
 * The pure parts of PassthroughVm's preview preflight (provider/qemu/preflight.ts): what /proc/mounts says of the
 * hugetlbfs page size, qemu-bridge-helper's ACL rules, and the hugepage arithmetic, as tables.
 */
import { HostEnv, PreflightWant, bridgeAllowed, envOps, envProblems, hugetlbfsPageKb, parseEnv, statKind } from "../../provider/qemu/preflight";

describe.each<[string, string, number | null]>([
    ["systemd's 2 MiB mount", "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n", 2048],
    ["a 1 GiB mount as the kernel prints it", "tmpfs /run tmpfs rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=1024M 0 0\n", 1048576],
    ["pagesize=1G", "none /dev/hugepages hugetlbfs rw,pagesize=1G 0 0\n", 1048576],
    ["a hugetlbfs elsewhere only", "hugetlbfs /mnt/huge hugetlbfs rw,pagesize=2M 0 0\n", null],
    ["a tmpfs at /dev/hugepages", "tmpfs /dev/hugepages tmpfs rw 0 0\n", null],
])("/proc/mounts: %s", (_what, mounts, want) => {
    test("page size of /dev/hugepages", () => expect(hugetlbfsPageKb(mounts)).toBe(want));
});

describe.each<[string, string, boolean | undefined]>([
    ["allow by name", "allow br0\n", true],
    ["allow all", "# comment\nallow all\n", true],
    ["another bridge only", "allow virbr0\n", false],
    ["a deny wins over an allow", "allow all\ndeny br0\n", false],
    ["deny all wins", "allow br0\ndeny all\n", false],
    ["empty: default deny", "", false],
    ["an include may allow it", "include /etc/qemu/br0.conf\n", undefined],
    ["an allow with an include is still open", "allow br0\ninclude /etc/qemu/more.conf\n", undefined],
])("bridge.conf: %s", (_what, conf, want) => {
    test("br0 allowed", () => expect(bridgeAllowed(conf, "br0")).toBe(want));
});

test("stat's %F words, the empty regular file included", () => {
    expect(["regular empty file", "regular file", "directory", "character special file", "block special file", "fifo"].map((data) => statKind({ ok: true, data }))).toEqual(["file", "file", "dir", "char", "block", "other"]);
    expect(statKind({ ok: false, data: "" })).toBe("absent");
});

describe("hugepages: pages of the mount's size, rounded up, with what this VM holds counted back", () => {
    const want: PreflightWant = { accel: "tcg", memoryMb: 3000, hugepages: true, disks: [], romfiles: [] };
    const env = (pageKb: number, available: number): HostEnv => ({ nodes: new Map(), qemu: { ok: true, version: "QEMU emulator version 7.2.19" }, hugetlbfsPageKb: pageKb, hugepagesAvailable: new Map([[pageKb, available]]), bridgeConf: null });
    test.each<[number, number, number, boolean]>([
        [2048, 1500, 0, true],
        [2048, 1499, 0, false],
        [1048576, 3, 0, true], // 3000 MiB takes 3 pages of 1 GiB (QEMU rounds the backend up to whole pages)
        [1048576, 2, 0, false],
        [1048576, 0, 3000, true],
    ])("page %i kB, %i available, %i MiB held → ok %s", (pageKb, available, held, ok) => {
        expect(envProblems(want, env(pageKb, available), held).length === 0).toBe(ok);
    });
    test("memory smaller than one page is QEMU's refusal, on memoryMb", () => {
        expect(envProblems({ ...want, memoryMb: 512 }, env(1048576, 4)).map((f) => f.property)).toEqual(["memoryMb"]);
    });
});

describe("backend libvirt: libvirt runs QEMU and makes the bridge's tap itself", () => {
    const qemuWant: PreflightWant = { accel: "tcg", memoryMb: 256, hugepages: false, disks: [], romfiles: [], bridge: "br0" };
    const libvirtWant: PreflightWant = { ...qemuWant, emulator: "/usr/bin/qemu-system-x86_64", bridgeHelper: false };
    // A host with bridge br0, no /etc/qemu/bridge.conf, and QEMU installed.
    const answer = (w: PreflightWant, emulator = true) =>
        envOps(w).map((op) => {
            if (op.op === "stat") return op.path === "/sys/class/net/br0/bridge" ? { ok: true, data: "directory" } : op.path === w.emulator && emulator ? { ok: true, data: "regular file" } : { ok: false, data: "" };
            if (op.op === "exec") return { ok: true, data: "QEMU emulator version 7.2.19\n" };
            return { ok: false, data: "", errno: "ENOENT" };
        });

    test("no qemu-bridge-helper ACL to satisfy and no QEMU run by us: a bridge missing from bridge.conf is no problem", () => {
        const ops = envOps(libvirtWant);
        expect(ops.filter((o) => o.op === "exec")).toEqual([]);
        expect(ops).not.toContainEqual(expect.objectContaining({ path: "/etc/qemu/bridge.conf" }));
        expect(envProblems(libvirtWant, parseEnv(libvirtWant, answer(libvirtWant)))).toEqual([]);
        // The QEMU backend on the same host is refused: qemu-bridge-helper would deny br0.
        expect(envProblems(qemuWant, parseEnv(qemuWant, answer(qemuWant))).map((f) => f.reason)).toEqual([expect.stringMatching(/bridge.conf does not exist, so qemu-bridge-helper denies every bridge/)]);
    });

    test("a missing emulator names libvirt's <emulator> path", () => {
        expect(envProblems(libvirtWant, parseEnv(libvirtWant, answer(libvirtWant, false)))).toEqual([{ property: "machine", reason: expect.stringMatching(/^libvirt's emulator \/usr\/bin\/qemu-system-x86_64 does not exist: /) }]);
    });
});
