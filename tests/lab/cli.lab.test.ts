/**
 * `pulumi-vfio status` and `release` through the real CLI (dist/provider/cli.js in its own process, over SSH)
 * against the lab kernel: the GPU's group bound to vfio-pci by IommuBinding, listed by `status`, refused by
 * `release` while a nested QEMU holds it, then given back by `release --group` — bochs-drm and snd_hda_intel bound
 * again by the kernel's own matching, `/dev/vfio/<group>` gone.
 */
import { execFile } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { SshHost } from "../../provider/host/ssh";
import type { Host } from "../../provider/host/types";
import { check, create } from "../../provider/iommuBinding";
import type { HostStatus } from "../../provider/hostStatus";
import { driverNow, resetLabDevices } from "../contract/pci.contract";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const CLI = path.resolve(__dirname, "../../dist/provider/cli.js");
const NESTED_PID = "/run/lab-cli-nested.pid";

async function exec(host: Host, argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const [r] = await host.run([{ op: "exec", argv, timeoutMs: 120_000 }]);
    return { code: r.code ?? (r.ok ? 0 : 1), stdout: r.data, stderr: r.message ?? "" };
}

labDescribe("pulumi-vfio status and release on the lab kernel", () => {
    let host: SshHost;
    let dir: string;
    let ssh: string[];

    /** The CLI in its own node process, over SSH to the lab. */
    function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
        return new Promise((resolve) =>
            execFile(process.execPath, [CLI, ...args, ...ssh], { timeout: 300_000 }, (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr })),
        );
    }

    const stopNested = () => exec(host, ["sh", "-c", `test -f ${NESTED_PID} || exit 0; p=$(cat ${NESTED_PID}); kill $p; for i in $(seq 50); do test -e /proc/$p || break; sleep 0.2; done; rm -f ${NESTED_PID}`]);

    beforeAll(async () => {
        host = new SshHost(lab!.connection);
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-cli-lab-"));
        const key = path.join(dir, "id");
        fs.writeFileSync(key, lab!.connection.privateKey, { mode: 0o600 });
        const hostKey = (await lab!.ssh(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])).stdout.trim().split(/\s+/).slice(0, 2).join(" ");
        ssh = ["--ssh", `root@${lab!.connection.host}:${lab!.connection.port}`, "-i", key, "--host-key", hostKey];
        await resetLabDevices(host);
    });
    afterAll(async () => {
        if (host) {
            await stopNested();
            await resetLabDevices(host);
            await host.close();
        }
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    test("status lists the bound group; release refuses while QEMU holds it, then --group gives back bochs-drm and snd_hda_intel", async () => {
        const c = await check({}, { device: GPU }, host);
        expect(c.failures).toEqual([]);
        const { outs } = await create(c.inputs, host);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);

        const st = await cli(["status", "--json"]);
        expect(st.stderr).toBe("");
        expect(st.code).toBe(0);
        const status = JSON.parse(st.stdout) as HostStatus;
        expect(status.devices.map((d) => [d.address, d.driver, d.override, d.group])).toEqual([
            [GPU, "vfio-pci", "vfio-pci", outs.group],
            [AUDIO, "vfio-pci", "vfio-pci", outs.group],
        ]);
        expect(status.vfioGroups).toEqual(expect.arrayContaining([{ group: outs.group, path: `/dev/vfio/${outs.group}`, holders: [] }]));
        expect(status.seesEveryProcess).toBe(true);

        // A nested QEMU holds the group: release must refuse (the unbind would block in the kernel), naming it.
        const args = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-S"];
        args.push("-device", `vfio-pci,host=${GPU},multifunction=on,addr=0x5.0`, "-device", `vfio-pci,host=${AUDIO},addr=0x5.1`, "-daemonize", "-pidfile", NESTED_PID);
        expect((await exec(host, args)).code).toBe(0);
        const text = await cli(["status"]);
        expect(text.stdout).toMatch(new RegExp(`^  ${GPU} .*group ${outs.group} +held by PID \\d+ \\(qemu-system-x86\\)`, "m"));
        const refused = await cli(["release", GPU, "--group"]);
        expect(refused.code).toBe(1);
        expect(refused.stderr).toMatch(new RegExp(`refusing to release IOMMU group ${outs.group}: /dev/vfio/${outs.group} is held open by PID \\d+ \\(qemu-system-x86\\)`));
        expect(await driverNow(host, GPU)).toBe("vfio-pci");
        await stopNested();

        const rel = await cli(["release", GPU, "--group"]);
        expect(rel.stderr).toBe("");
        expect(rel.code).toBe(0);
        expect(rel.stdout).toBe(`${GPU} (VGA controller [1234:1111]): vfio-pci (override vfio-pci) → bochs-drm\n${AUDIO} (Audio device [8086:2668]): vfio-pci (override vfio-pci) → snd_hda_intel\n`);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
        const [node] = await host.run([{ op: "stat", path: `/dev/vfio/${outs.group}` }]);
        expect(node.ok).toBe(false);

        const after = JSON.parse((await cli(["status", "--json"])).stdout) as HostStatus;
        expect(after.devices).toEqual([]);
    });
});
