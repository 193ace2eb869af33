// Proves the lab fixture itself: the guest is the passthrough host LAB.md describes, and the harness reaches it
// the way the lab tests will (ssh, copy, QMP), on loopback only.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();

/** Listening TCP sockets on `port` from /proc/net/tcp{,6}, as "hexaddr" strings (IPv4 little-endian hex). */
function listeners(port: number): { v4: string[]; v6: string[] } {
    const read = (file: string) =>
        fs
            .readFileSync(file, "utf8")
            .split("\n")
            .slice(1)
            .map((l) => l.trim().split(/\s+/))
            .filter((f) => f.length > 3 && f[3] === "0A" && parseInt(f[1].split(":")[1], 16) === port)
            .map((f) => f[1].split(":")[0]);
    return { v4: read("/proc/net/tcp"), v6: fs.existsSync("/proc/net/tcp6") ? read("/proc/net/tcp6") : [] };
}

labDescribe("lab fixture", () => {
    const l = lab!;

    test("ssh runs argv as root in the guest, quoted, with stdin", async () => {
        expect(await l.ssh(["id", "-u"])).toEqual({ code: 0, stdout: "0\n", stderr: "" });
        expect((await l.ssh(["hostname"])).stdout.trim()).toBe("vfio-lab");
        const odd = `it's "quoted" $HOME \`id\` ; *`;
        const r = await l.ssh(["sh", "-c", 'printf "%s|" "$1"; cat', "sh", odd], { input: "from stdin" });
        expect(r).toEqual({ code: 0, stdout: `${odd}|from stdin`, stderr: "" });
        expect((await l.ssh(["sh", "-c", "echo oops >&2; exit 3"])).code).toBe(3);
    });

    test("the IOMMU is on", async () => {
        const groups = (await l.ssh(["ls", "/sys/kernel/iommu_groups"])).stdout.trim().split("\n");
        expect(groups.length).toBeGreaterThan(3);
        expect((await l.ssh(["ls", "/sys/class/iommu"])).stdout.trim()).toBe("dmar0");
    });

    test("the GPU and its HDMI audio share one IOMMU group; 01:00.0 is a secondary GPU", async () => {
        const r = await l.ssh([
            "sh", "-c",
            "for d in 0000:01:00.0 0000:01:00.1; do basename $(readlink /sys/bus/pci/devices/$d/iommu_group); done; " +
                "cat /sys/bus/pci/devices/0000:00:01.0/boot_vga /sys/bus/pci/devices/0000:01:00.0/boot_vga",
        ]);
        const [g0, g1, consoleVga, secondVga] = r.stdout.trim().split("\n");
        expect(g0).toMatch(/^\d+$/);
        expect(g1).toBe(g0);
        expect([consoleVga, secondVga]).toEqual(["1", "0"]);
    });

    test("mdev parents (mtty, mbochs) and SR-IOV on the NVMe", async () => {
        expect((await l.ssh(["ls", "/sys/class/mdev_bus"])).stdout.split("\n")).toEqual(expect.arrayContaining(["mtty", "mbochs"]));
        const types = (await l.ssh(["ls", "/sys/class/mdev_bus/mtty/mdev_supported_types"])).stdout.trim().split("\n");
        expect(types).toEqual(["mtty-1", "mtty-2"]);
        expect((await l.ssh(["cat", "/sys/bus/pci/devices/0000:03:00.0/sriov_totalvfs"])).stdout.trim()).toBe("4");
    });

    test("vfio-pci is loadable and the tools the provider uses exist", async () => {
        expect((await l.ssh(["modprobe", "-n", "vfio-pci"])).code).toBe(0);
        const node = await l.ssh(["node", "--version"]);
        expect(node.stdout).toMatch(/^v1[89]\./);
        for (const tool of ["bash", "flock", "driverctl", "mdevctl", "qemu-system-x86_64", "tar"]) {
            const r = await l.ssh(["sh", "-c", 'command -v "$1"', "sh", tool]);
            expect({ tool, code: r.code }).toEqual({ tool, code: 0 });
        }
    });

    test("copyTo puts a local tree into the guest", async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lab-copy-"));
        try {
            fs.mkdirSync(path.join(dir, "sub dir"));
            fs.writeFileSync(path.join(dir, "sub dir", "a.txt"), "hello lab\n");
            await l.copyTo(dir, "/tmp/lab copy");
            const r = await l.ssh(["cat", `/tmp/lab copy/${path.basename(dir)}/sub dir/a.txt`]);
            expect(r).toEqual({ code: 0, stdout: "hello lab\n", stderr: "" });
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
            await l.ssh(["rm", "-rf", "/tmp/lab copy"]);
        }
    });

    test("QMP of the lab VM answers", async () => {
        expect(await l.qmp("query-status")).toMatchObject({ status: "running", running: true });
    });

    test("the forwarded SSH port listens on 127.0.0.1 only", () => {
        expect(l.connection.host).toBe("127.0.0.1");
        const { v4, v6 } = listeners(l.connection.port);
        expect(v4).toEqual(["0100007F"]); // 127.0.0.1, little-endian hex
        expect(v6).toEqual([]);
    });
});
