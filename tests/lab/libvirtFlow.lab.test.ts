/**
 * A libvirt domain from host.yaml, as a user meets it: the root program (program/index.ts) and the real
 * dynamic-provider plugin over SSH converge a host.yaml whose VM has `backend: libvirt` (the VGA+audio group, an NVMe
 * VF, an mtty mdev, a /dev/shm Looking Glass buffer); then a hand edit of the domain (what virt-manager's XML editor
 * or `virsh edit` does: `virsh define` of a changed XML) is found by refresh and put back by up; then every entry is
 * removed and the host has no domain and its drivers back.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { PluginProcess, REPO } from "../engine/harness";
import { ProgramEngine, declsOf } from "../engine/program";
import { runProgram } from "../programs/runProgram";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const PROJECT = "pulumi-vfio-host";
const STACK = "lab";
const SHM = "/dev/shm/looking-glass-flow";
const DOMAIN = "lab-libvirt";

labDescribe("host.yaml with a libvirt domain on the lab kernel, through the plugin", () => {
    const l = lab!;
    const sh = async (script: string) => {
        const r = await l.ssh(["sh", "-c", script], { timeoutMs: 300_000 });
        if (r.code !== 0) throw new Error(`${script}: exit ${r.code}: ${r.stderr}`);
        return r.stdout;
    };
    const hostYaml = (withEntries: boolean) =>
        [
            "# yaml-language-server: $schema=" + path.join(REPO, "schema", "host.schema.json"),
            "name: lab",
            "connection:",
            `  host: ${l.connection.host}`,
            `  port: ${l.connection.port}`,
            "  user: root",
            `  privateKeyFile: ${l.keyPath}`,
            `  hostKey: "${l.connection.hostKey}"`,
            ...(withEntries
                ? [
                      "bindings:",
                      '  gpu: { device: "0000:01:00.0" }',
                      "virtualFunctions:",
                      '  nvme: { physicalFunction: "0000:03:00.0", count: 1 }',
                      "mdevs:",
                      "  serial: { parent: mtty, type: mtty-2 }",
                      "vms:",
                      "  win:",
                      `    name: ${DOMAIN}`,
                      "    backend: libvirt",
                      "    accel: tcg",
                      "    cpu: { cores: 1 }",
                      "    memoryMb: 256",
                      "    network: { mode: none }",
                      "    shutdownTimeoutSeconds: 2",
                      "    devices: [gpu]",
                      "    virtualFunctions: [{ from: nvme, index: 0 }]",
                      "    mdevs: [serial]",
                      `    sharedMemory: { path: ${SHM}, sizeMb: 32 }`,
                  ]
                : ["bindings: {}", "vms: {}"]),
            "",
        ].join("\n");
    const drivers = async () => (await sh("for a in 0000:01:00.0 0000:01:00.1; do basename $(readlink /sys/bus/pci/devices/$a/driver); done")).trim().split("\n");

    test("preview lists the domain; up defines and starts it; a hand edit is drift on refresh and up repairs it; removing the entries undefines it and gives the drivers back", async () => {
        const project = fs.mkdtempSync(path.join(os.tmpdir(), "pv-lvflow-"));
        const plugin = await PluginProcess.start();
        const engine = new ProgramEngine(plugin, STACK, PROJECT);
        const connection = { host: l.connection.host, port: l.connection.port, user: "root", privateKey: fs.readFileSync(l.keyPath, "utf8"), hostKey: l.connection.hostKey };
        const program = async (withEntries: boolean) => {
            fs.writeFileSync(path.join(project, "host.yaml"), hostYaml(withEntries));
            const run = await runProgram(project, { project: PROJECT, stack: STACK, main: path.join(REPO, "program", "index.ts"), config: { hostFile: "host.yaml" } });
            return declsOf(run.hosts[0].plan, connection);
        };
        const ops = (steps: { urn: string; op: string }[]) => steps.map((s) => `${s.urn.split("::").pop()} ${s.op}`);
        try {
            let decls = await program(true);
            const preview = await engine.previewProgram(decls);
            expect(ops(preview)).toEqual(["lab-gpu create", "lab-nvme create", "lab-nvme.vf0 create", "lab-serial create", "lab-win create"]);
            expect((await l.ssh(["virsh", "-c", "qemu:///system", "domstate", DOMAIN])).code).not.toBe(0);

            expect(ops(await engine.upProgram(decls))).toEqual(["lab-gpu create", "lab-nvme create", "lab-nvme.vf0 create", "lab-serial create", "lab-win create"]);
            const list = await sh(`virsh -c qemu:///system list`);
            expect(list).toMatch(new RegExp(`^\\s*\\d+\\s+${DOMAIN}\\s+running\\s*$`, "m"));
            // What the user sees in virsh (the README describes it): libvirt's additions around our parts.
            const shown = await sh(`virsh -c qemu:///system dumpxml --inactive ${DOMAIN}`);
            expect(shown).toMatch(/<uuid>[0-9a-f-]{36}<\/uuid>/);
            expect(shown).toContain("machine='pc-q35-");
            expect(shown.match(/<hostdev mode='subsystem' type='pci' managed='no'>\s*<source>\s*<address [^>]*\/>\s*<\/source>\s*<address type='pci' [^>]*\/>/g)).toHaveLength(3);
            expect(await drivers()).toEqual(["vfio-pci", "vfio-pci"]);
            // The domain XML (unknown at the first preview: the devices come from bindings made in the same up).
            const xml: string = engine.get("lab-win")!.outputs.domainXml;
            expect(xml).toMatch(/^<domain type='qemu'>/);
            expect(xml.match(/<hostdev mode='subsystem' type='pci' managed='no'>/g)).toHaveLength(3);
            expect(xml).toContain("<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci'>");
            expect(xml).toContain("<shmem name='looking-glass-flow'>");
            expect(ops(await engine.upProgram(decls))).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial same", "lab-win same"]);

            // The hand edit: more memory, as virt-manager's Memory page would write it.
            await sh(`virsh -c qemu:///system dumpxml --inactive ${DOMAIN} | sed 's|<memory unit=.KiB.>262144</memory>|<memory unit="KiB">524288</memory>|; s|<currentMemory unit=.KiB.>262144</currentMemory>|<currentMemory unit="KiB">524288</currentMemory>|' > /root/edited.xml && virsh -c qemu:///system define /root/edited.xml`);
            expect(await sh(`virsh -c qemu:///system dumpxml --inactive ${DOMAIN}`)).toContain("<memory unit='KiB'>524288</memory>");
            // lab-nvme's outputs change too, rightly: its VF's driver, recorded when it had none, is vfio-pci now (bound by
            // lab-nvme.vf0 after it). Only the VM has drift to repair (the preview below).
            expect(ops(await engine.refresh())).toEqual(["lab-nvme refresh-drift", "lab-win refresh-drift"]);
            expect(engine.get("lab-nvme")!.outputs.virtualFunctions).toEqual([expect.objectContaining({ address: "0000:03:00.1", driver: "vfio-pci" })]);
            expect(engine.get("lab-win")!.outputs.domainDrift).toEqual(["memory", "currentMemory"]);
            expect(ops(await engine.previewProgram(decls))).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial same", "lab-win update"]);
            expect(ops(await engine.upProgram(decls))).toEqual(["lab-gpu same", "lab-nvme same", "lab-nvme.vf0 same", "lab-serial same", "lab-win update"]);
            expect(await sh(`virsh -c qemu:///system dumpxml --inactive ${DOMAIN}`)).toContain("<memory unit='KiB'>262144</memory>");
            expect((await sh(`virsh -c qemu:///system domstate ${DOMAIN}`)).trim()).toBe("running");
            expect(engine.get("lab-win")!.outputs.domainDrift).toEqual([]);
            expect(await drivers()).toEqual(["vfio-pci", "vfio-pci"]);

            decls = await program(false);
            expect(ops(await engine.upProgram(decls))).toEqual(["lab-win delete", "lab-serial delete", "lab-nvme.vf0 delete", "lab-nvme delete", "lab-gpu delete"]);
            expect(await sh(`virsh -c qemu:///system list --all --name`)).not.toContain(DOMAIN);
            expect(await drivers()).toEqual(["bochs-drm", "snd_hda_intel"]);
        } finally {
            if (engine.state.length) await engine.destroy().catch(() => undefined);
            await plugin.stop();
            fs.rmSync(project, { recursive: true, force: true });
            await l.ssh(["sh", "-c", `virsh -c qemu:///system destroy ${DOMAIN}; virsh -c qemu:///system undefine --nvram ${DOMAIN}; rm -f ${SHM} /root/edited.xml`]);
        }
    });
});
