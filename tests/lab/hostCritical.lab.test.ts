/**
 * Host-critical devices on the lab kernel, through the real dynamic-provider plugin as `pulumi preview` drives it
 * over SSH: the ICH9 group (LPC 00:1f.0, AHCI 00:1f.2, SMBus 00:1f.3), the virtio disk the guest's root is on
 * (/dev/vda = 00:03.0) and the NIC of the SSH session (lab0 = 00:02.0) are refused at check with the member and the
 * reason, and nothing on the host changes. Then the same from the provider running inside the guest (local host),
 * where the SSH session found is the one the runner was started from.
 */
import { createHash } from "crypto";
import { SshHost } from "../../provider/host/ssh";
import { Op } from "../../provider/host/types";
import { getHostInventory } from "../../provider/inventory";
import { CheckFailedError, Engine, PluginProcess } from "../engine/harness";
import { guestCall } from "./guest";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const TYPE = "pulumi-nodejs:dynamic/vfio:IommuBinding";
const ICH9 = ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"];
const WATCHED = [...ICH9, "0000:00:02.0", "0000:00:03.0", "0000:00:10.0"];

labDescribe("host-critical devices on the lab kernel", () => {
    let plugin: PluginProcess;
    let host: SshHost;
    let connection: Record<string, unknown>;

    /** Driver and override of every watched device: what a refused preview must leave exactly as it was. */
    async function snapshot(): Promise<string[]> {
        const r = await host.run(WATCHED.flatMap((a): Op[] => [{ op: "readlink", path: `/sys/bus/pci/devices/${a}/driver` }, { op: "read", path: `/sys/bus/pci/devices/${a}/driver_override` }]));
        return WATCHED.map((a, i) => `${a} ${r[2 * i].data.trim().split("/").pop() || "-"} ${r[2 * i + 1].data.trim()}`);
    }

    /** `pulumi preview` of one binding: the failures it stops on, by property. */
    async function previewFailures(inputs: Record<string, unknown>): Promise<{ property: string; reason: string }[]> {
        const engine = new Engine(plugin);
        const err = await engine.preview([{ name: "b", kind: "iommuBinding", type: TYPE, inputs: { ...inputs, connection } }]).catch((e) => e);
        expect(err).toBeInstanceOf(CheckFailedError);
        return (err as CheckFailedError).failures;
    }

    beforeAll(async () => {
        const l = lab!;
        host = new SshHost(l.connection);
        const key = (await l.ssh(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])).stdout.trim();
        const hostKey = "SHA256:" + createHash("sha256").update(Buffer.from(key.split(/\s+/)[1], "base64")).digest("base64").replace(/=+$/, "");
        connection = { ...l.connection, hostKey };
        plugin = await PluginProcess.start();
    });
    afterAll(async () => {
        await plugin?.stop();
        await host?.close();
    });

    test("binding the ICH9 SATA controller 0000:00:1f.2 is refused at preview: the LPC and the SMBus are named with why; nothing is written", async () => {
        const before = await snapshot();
        expect(before.slice(0, 3)).toEqual(["0000:00:1f.0 lpc_ich (null)", "0000:00:1f.2 ahci (null)", "0000:00:1f.3 i801_smbus (null)"]);
        const failures = await previewFailures({ device: "0000:00:1f.2" });
        expect(failures).toEqual([
            { property: "allowHostCritical", reason: expect.stringMatching(/^0000:00:1f\.0 \(ISA bridge 8086:2918, on lpc_ich\), in IOMMU group \d+ with 0000:00:1f\.2, is the ISA\/LPC bridge \(class 0601\)/) },
            { property: "allowHostCritical", reason: expect.stringMatching(/^0000:00:1f\.3 \(SMBus 8086:2930, on i801_smbus\), in IOMMU group \d+ with 0000:00:1f\.2, is the SMBus controller \(class 0c05\)/) },
        ]);
        expect(failures[0].reason).toContain('set allowHostCritical: ["0000:00:1f.0","0000:00:1f.3"]');
        expect(await snapshot()).toEqual(before);
    });

    test("the virtio disk the root filesystem is on (/dev/vda → 00:03.0) and the SSH session's NIC (lab0 → 00:02.0) are host-critical", async () => {
        const before = await snapshot();
        expect(await previewFailures({ device: "00:03.0" })).toEqual([
            { property: "allowHostCritical", reason: expect.stringMatching(/^0000:00:03\.0 \(SCSI storage controller 1af4:1001, on virtio-pci\) holds the root filesystem \/ \(ext4 on \/dev\/vda\): binding it to vfio-pci takes it from the host/) },
        ]);
        expect(await previewFailures({ device: "00:02.0" })).toEqual([
            {
                property: "allowHostCritical",
                reason: expect.stringMatching(/^0000:00:02\.0 \(Ethernet controller 1af4:1000, on virtio-pci\) carries the SSH session we are connected over \(10\.0\.2\.2:\d+ → 10\.0\.2\.15:22 on lab0\)/),
            },
        ]);
        expect(await snapshot()).toEqual(before);
    });

    test("naming a root port says it stays on pcieport and names the devices behind it", async () => {
        expect(await previewFailures({ device: "00:10.0" })).toEqual([
            {
                property: "device",
                reason: "0000:00:10.0 is a PCI bridge (class 0604); a bridge cannot be passed through to a VM, and this one stays on pcieport. Bind the device behind it instead: 0000:01:00.0, 0000:01:00.1",
            },
        ]);
    });

    test("inventory tells the GPU's group (bind it) from the chipset's, the root disk's and the SSH NIC's (host-critical)", async () => {
        const inv = await getHostInventory(host);
        const of = (a: string) => inv.groups.find((g) => g.members.includes(a))!;
        expect(of("0000:01:00.0")).toMatchObject({ verdict: "bind", hostCritical: [] });
        expect(of("0000:00:1f.2").verdict).toBe("host-critical");
        expect(of("0000:00:1f.2").hostCritical.map((c) => c.address)).toEqual(["0000:00:1f.0", "0000:00:1f.3"]);
        expect(of("0000:00:03.0").hostCritical).toEqual([{ address: "0000:00:03.0", reason: "holds the root filesystem / (ext4 on /dev/vda)" }]);
        expect(of("0000:00:02.0").hostCritical).toEqual([{ address: "0000:00:02.0", reason: expect.stringMatching(/^carries the SSH session we are connected over \(10\.0\.2\.2:\d+ → 10\.0\.2\.15:22 on lab0\)$/) }]);
        expect(of("0000:00:10.0").verdict).toBe("bridges");
    });

    test("inside the guest (local host, reached by an SSH login) the same session NIC and the ICH9 group are refused", async () => {
        const nic = await guestCall(lab!, "iommuBinding", "check", [{}, { device: "00:02.0" }]);
        expect(nic.failures.map((f: { reason: string }) => f.reason)).toEqual([expect.stringMatching(/carries the SSH session we are connected over \(10\.0\.2\.2:\d+ → 10\.0\.2\.15:22 on lab0\)/)]);
        const sata = await guestCall(lab!, "iommuBinding", "check", [{}, { device: "00:1f.2" }]);
        expect(sata.failures.map((f: { reason: string }) => f.reason.slice(0, 12))).toEqual(["0000:00:1f.0", "0000:00:1f.3"]);
    });
});
