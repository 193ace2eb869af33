/**
 * Single-GPU passthrough on the lab kernel: the console GPU 00:01.0 (bochs-drm, fbcon on vtcon0) handed over with
 * IommuBinding consoleHandover, with a stand-in `display-manager.service` in the guest.
 * - Through the root program and the real dynamic-provider plugin over SSH (host.yaml): the preview lists the
 *   steps and changes nothing; up stops the display manager, unbinds fbcon, binds the GPU to vfio-pci, arms the
 *   dead-man and starts a nested QEMU that holds the group; removing the entries stops the VM first, then gives the
 *   console back (bochs-drm, fbcon bound, the display manager active, the dead-man gone).
 * - The dead-man, on its own: handed over with no VM, the host takes its console back after the timer, while this
 *   test only watches (no provider code runs on the host meanwhile); with a process holding /dev/vfio/<group> it
 *   changes nothing.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { SshHost } from "../../provider/host/ssh";
import { IommuBindingOutputs, check, create, read, remove } from "../../provider/iommuBinding";
import { PluginProcess, REPO } from "../engine/harness";
import { ProgramEngine, declsOf, formatSteps } from "../engine/program";
import { runProgram } from "../programs/runProgram";
import { labHostYamlHead } from "../demo/flow";
import type { LabHandle } from "./lab";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const GPU = "0000:00:01.0";
const DM = "display-manager.service";

async function sh(l: LabHandle, script: string): Promise<string> {
    const r = await l.ssh(["sh", "-c", script]);
    if (r.code !== 0) throw new Error(`${script} failed (${r.code}): ${r.stderr}`);
    return r.stdout.trim();
}

/** What a user checks: the GPU's driver, fbcon's bind, the display manager's state, the dead-man timers. */
async function consoleNow(l: LabHandle): Promise<{ driver: string; fbcon: string; dm: string; timers: string }> {
    const out = await sh(
        l,
        `basename "$(readlink /sys/bus/pci/devices/${GPU}/driver)"; cat /sys/class/vtconsole/vtcon0/bind; systemctl is-active ${DM} || true; ` +
            `systemctl list-units --all --plain --no-legend 'pulumi-vfio-deadman-*.timer' | awk '{print $1}' | tr '\\n' ' '; echo`,
    );
    const [driver, fbcon, dm, timers] = out.split("\n");
    return { driver, fbcon, dm, timers: (timers ?? "").trim() };
}

const AS_BEFORE = { driver: "bochs-drm", fbcon: "1", dm: "active", timers: "" };

async function waitFor<T>(what: string, f: () => Promise<T>, ok: (v: T) => boolean, seconds: number): Promise<T> {
    let v = await f();
    for (let i = 0; i < seconds && !ok(v); i++) {
        await new Promise((r) => setTimeout(r, 1000));
        v = await f();
    }
    if (!ok(v)) throw new Error(`${what}: still ${JSON.stringify(v)} after ${seconds} s`);
    return v;
}

labDescribe("console handover of the lab's boot GPU (single-GPU passthrough)", () => {
    const l = lab!;
    let host: SshHost;

    beforeAll(async () => {
        host = new SshHost(l.connection);
        // The stand-in display manager: a long-running service under the name distributions alias their DM to.
        await sh(l, `mkdir -p /run/systemd/system && printf '[Unit]\\nDescription=stand-in display manager (pulumi-vfio lab)\\n[Service]\\nExecStart=/bin/sleep infinity\\n' > /run/systemd/system/${DM} && systemctl daemon-reload && systemctl start ${DM}`);
        expect(await consoleNow(l)).toEqual(AS_BEFORE);
    });

    afterAll(async () => {
        await l.ssh(["sh", "-c", `systemctl stop 'pulumi-vfio-deadman-*.timer'; [ -f /run/pulumi-vfio-lab-holder.pid ] && kill $(cat /run/pulumi-vfio-lab-holder.pid); rm -f /run/pulumi-vfio-lab-holder.pid; rm -rf /run/pulumi-vfio/console; d=$(readlink /sys/bus/pci/devices/${GPU}/driver); if [ "\${d##*/}" != bochs-drm ]; then echo > /sys/bus/pci/devices/${GPU}/driver_override; [ -n "$d" ] && echo ${GPU} > $d/unbind; echo ${GPU} > /sys/bus/pci/drivers/bochs-drm/bind; fi; systemctl stop ${DM}; rm -f /run/systemd/system/${DM}; systemctl daemon-reload`]);
        await host.close();
    });

    test("host.yaml through the real plugin: preview lists the steps, up hands the console to a nested VM, removing the entries gives it back", async () => {
        const project = fs.mkdtempSync(path.join(os.tmpdir(), "pv-console-"));
        const plugin = await PluginProcess.start();
        const engine = new ProgramEngine(plugin, "lab", "pulumi-vfio-host");
        const connection = { host: l.connection.host, port: l.connection.port, user: "root", privateKey: fs.readFileSync(l.keyPath, "utf8"), hostKey: l.connection.hostKey };
        const hostYaml = (withEntries: boolean) =>
            [
                ...labHostYamlHead(l),
                ...(withEntries
                    ? [
                          "bindings:",
                          "  console:",
                          `    device: "${GPU}"       # the boot GPU: the host's console runs on it`,
                          "    allowBootVga: true",
                          "    consoleHandover: true",
                          "    deadManSeconds: 900         # longer than the nested VM's start under TCG",
                          "vms:",
                          "  single:",
                          "    accel: tcg",
                          "    cpu: { cores: 1 }",
                          "    memoryMb: 256",
                          "    network: { mode: none }",
                          "    shutdownTimeoutSeconds: 3",
                          "    devices: [console]",
                      ]
                    : ["bindings: {}", "vms: {}"]),
                "",
            ].join("\n");
        const program = async (withEntries: boolean) => {
            fs.writeFileSync(path.join(project, "host.yaml"), hostYaml(withEntries));
            const run = await runProgram(project, { project: "pulumi-vfio-host", stack: "lab", main: path.join(REPO, "program", "index.ts"), config: { hostFile: "host.yaml" } });
            return declsOf(run.hosts[0].plan, connection);
        };
        try {
            const decls = await program(true);
            const preview = formatSteps(await engine.previewProgram(decls));
            console.log(preview);
            expect(preview).toContain(`${GPU} (VGA controller 1234:1111): bochs-drm → vfio-pci`);
            expect(preview).toContain(`console handover, before ${GPU} leaves its driver: 1. stop ${DM} (active now); 2. unbind vtcon0 ((M) frame buffer device; the virtual consoles go to the dummy console)`);
            expect(preview).toContain(`console release on destroy, once ${GPU} is back on bochs-drm:`);
            expect(preview).toMatch(/dead-man pulumi-vfio-deadman-\d+\.timer/);
            expect(await consoleNow(l)).toEqual(AS_BEFORE);

            const up = await engine.upProgram(decls);
            expect(up.map((s) => `${s.urn.split("::").pop()} ${s.op}`)).toEqual(["lab-console create", "lab-single create"]);
            const bound = engine.state.find((s) => s.urn.endsWith("::lab-console"))!.outputs as IommuBindingOutputs;
            const group = bound.group;
            expect(await consoleNow(l)).toEqual({ driver: "vfio-pci", fbcon: "0", dm: "inactive", timers: `pulumi-vfio-deadman-${group}.timer` });
            expect(bound.console).toEqual({ displayManagerStopped: DM, vtconsoles: ["vtcon0"], framebuffers: [], deadMan: { unit: `pulumi-vfio-deadman-${group}`, seconds: 900 } });
            // The nested QEMU took the console GPU: it holds its group, and the provider saw it running over QMP.
            const vm = engine.state.find((s) => s.urn.endsWith("::lab-single"))!.outputs;
            expect(vm.status).toBe("running");
            expect(await sh(l, `ls -l /proc/${vm.pid}/fd | grep -c '/dev/vfio/${group}$'`)).toBe("1");
            expect(await sh(l, `stat -c %a /run/pulumi-vfio/console/deadman-${group}.sh /run/pulumi-vfio/console/deadman-${group}.batch /var/lib/pulumi-vfio/console-${GPU}.json`)).toBe("700\n600\n600");

            const gone = await engine.upProgram(await program(false));
            expect(gone.map((s) => `${s.urn.split("::").pop()} ${s.op}`)).toEqual(["lab-single delete", "lab-console delete"]);
            expect(await consoleNow(l)).toEqual(AS_BEFORE);
            expect(await sh(l, `ls -A /run/pulumi-vfio/console 2>/dev/null | wc -l; test -e /var/lib/pulumi-vfio/console-${GPU}.json && echo journal left || true`)).toBe("0");
        } finally {
            if (engine.state.length) await engine.destroy().catch(() => undefined);
            await plugin.stop();
            fs.rmSync(project, { recursive: true, force: true });
        }
    });

    async function handOver(deadManSeconds: number): Promise<IommuBindingOutputs> {
        const c = await check({}, { device: GPU, allowBootVga: true, consoleHandover: true, deadManSeconds }, host);
        expect(c.failures).toEqual([]);
        return (await create(c.inputs, host)).outs;
    }

    test("the dead-man: handed over and no VM started, the host takes its console back by itself; refresh sees it, destroy finishes", async () => {
        const outs = await handOver(5);
        expect(await consoleNow(l)).toMatchObject({ driver: "vfio-pci", fbcon: "0", dm: "inactive" });
        // Nothing of the provider runs on the host from here: only this test's reads.
        const back = await waitFor("the console after the dead-man", () => consoleNow(l), (c) => c.driver === "bochs-drm" && c.dm === "active", 90);
        expect(back).toEqual(AS_BEFORE);
        const journal = await sh(l, `journalctl -u pulumi-vfio-deadman-${outs.group}.service --no-pager -o cat`);
        expect(journal).toMatch(/end/);
        // pulumi refresh: the GPU is off vfio-pci, drift for up to repair; destroy still finishes.
        const seen = (await read(GPU, outs, host)).props!;
        expect(seen.members.find((m) => m.address === GPU)!.driver).toBe("bochs-drm");
        await remove(GPU, seen, host);
        expect(await consoleNow(l)).toEqual(AS_BEFORE);
    });

    test("the dead-man changes nothing while a process holds /dev/vfio/<group>", async () => {
        const outs = await handOver(5);
        // A stand-in for QEMU: a process holding the group open, as a running VM does.
        await sh(l, `nohup bash -c 'echo $$ > /run/pulumi-vfio-lab-holder.pid; exec 3</dev/vfio/${outs.group}; exec sleep 120' >/dev/null 2>&1 &`);
        await waitFor("the holder", () => sh(l, `ls -l /proc/$(cat /run/pulumi-vfio-lab-holder.pid)/fd 2>/dev/null | grep -c /dev/vfio/${outs.group} || true`), (n) => n === "1", 10);
        await waitFor("the dead-man's run", () => l.ssh(["systemctl", "is-active", `pulumi-vfio-deadman-${outs.group}.timer`]).then((r) => r.stdout.trim()), (s) => s !== "active", 60);
        await new Promise((r) => setTimeout(r, 3000));
        expect(await consoleNow(l)).toMatchObject({ driver: "vfio-pci", fbcon: "0", dm: "inactive" });
        await sh(l, "kill $(cat /run/pulumi-vfio-lab-holder.pid); rm /run/pulumi-vfio-lab-holder.pid; sleep 1");
        await remove(GPU, outs, host);
        expect(await consoleNow(l)).toEqual(AS_BEFORE);
    });
});
