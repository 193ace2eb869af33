/**
 * IommuBinding when the provider is SIGKILLed midway, on the lab's real kernel: a child process runs the change over
 * SSH and kills itself after a chosen write of its batch (see killedProvider.ts), leaving the host exactly there.
 * Then `up` from a new process converges and `destroy` gives the GPU back to bochs-drm and its audio function back
 * to snd_hda_intel, as the host booted. Each test starts from the boot state and leaves it.
 */
import { spawn } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { SshHost } from "../../provider/host/ssh";
import { IommuBindingOutputs, check, create, diff, read, remove, update } from "../../provider/iommuBinding";
import { journalPath } from "../../provider/sysfs/journal";
import { driverNow, resetLabDevices } from "../contract/pci.contract";
import type { KillPoint, KilledProviderInput } from "./killedProvider";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const DEV = "/sys/bus/pci/devices";
const DRV = "/sys/bus/pci/drivers";
const JOURNAL = journalPath(GPU);
const REPO = path.resolve(__dirname, "..", "..").replace(/[\\/]dist$/, "");
const CHILD = path.join(REPO, "dist", "tests", "lab", "killedProvider.js");

/** Run the change in a child that SIGKILLs itself at `after`; the create's outputs when the phase is delete. */
function killedChange(input: KilledProviderInput): Promise<IommuBindingOutputs | undefined> {
    if (!fs.existsSync(CHILD)) throw new Error(`${CHILD} is missing: run \`npm run build\` first (the child runs the compiled provider)`);
    return new Promise((resolve, reject) => {
        const p = spawn(process.execPath, [CHILD], { stdio: ["pipe", "pipe", "pipe"] });
        let out = "";
        let err = "";
        p.stdout.on("data", (d) => (out += d));
        p.stderr.on("data", (d) => (err += d));
        p.on("error", reject);
        p.on("exit", (code, signal) => {
            if (signal !== "SIGKILL") return reject(new Error(`the provider child was not killed (exit ${code}, signal ${signal}): ${err}`));
            const line = out.split("\n").find((l) => l.startsWith("OUTS "));
            resolve(line ? (JSON.parse(line.slice(5)) as IommuBindingOutputs) : undefined);
        });
        // The key travels on stdin, never on a command line.
        p.stdin.end(JSON.stringify(input));
    });
}

async function overrideNow(host: SshHost, bdf: string): Promise<string> {
    const [r] = await host.run([{ op: "read", path: `${DEV}/${bdf}/driver_override` }]);
    return r.data.trim();
}

async function journalMode(host: SshHost): Promise<string | undefined> {
    const [r] = await host.run([{ op: "stat", path: JOURNAL }]);
    // `regular file <mode> <uid> <gid> ...` (the Host seam's stat).
    return r.ok ? /^regular file (\d+) /.exec(r.data)?.[1] ?? r.data : undefined;
}

labDescribe("IommuBinding killed mid-change on the lab kernel", () => {
    let host: SshHost;
    const l = lab!;

    beforeAll(() => {
        host = new SshHost(l.connection);
    });
    beforeEach(() => resetLabDevices(host));
    afterAll(async () => {
        await resetLabDevices(host);
        await host?.close();
    });

    async function state(h: SshHost): Promise<string[]> {
        return [await driverNow(h, GPU), await overrideNow(h, GPU), await driverNow(h, AUDIO), await overrideNow(h, AUDIO)];
    }

    const createPoints: [string, KillPoint, string[]][] = [
        ["after the unbind", { path: `${DRV}/bochs-drm/unbind`, data: GPU }, ["none", "(null)", "snd_hda_intel", "(null)"]],
        ["after the override", { path: `${DEV}/${GPU}/driver_override`, data: "vfio-pci" }, ["none", "vfio-pci", "snd_hda_intel", "(null)"]],
        ["after the first member", { path: "/sys/bus/pci/drivers_probe", data: GPU }, ["vfio-pci", "vfio-pci", "snd_hda_intel", "(null)"]],
    ];

    test.each(createPoints)("create killed %s: up from a new process records the boot drivers, destroy restores them", async (_what, after, left) => {
        await killedChange({ connection: l.connection, phase: "create", after, device: GPU });
        // A new connection and interpreter: nothing of the killed process survives but what it did to the host.
        const fresh = new SshHost(l.connection);
        try {
            expect(await state(fresh)).toEqual(left);
            expect(await journalMode(fresh)).toBe("600");
            const c = await check({}, { device: GPU }, fresh);
            expect(c.failures).toEqual([]);
            const { outs } = await create(c.inputs, fresh);
            expect(outs.members.map((m) => [m.previousDriver, m.previousOverride, m.driver])).toEqual([
                ["bochs-drm", null, "vfio-pci"],
                ["snd_hda_intel", null, "vfio-pci"],
            ]);
            await remove(outs.address, outs, fresh);
            expect(await state(fresh)).toEqual(["bochs-drm", "(null)", "snd_hda_intel", "(null)"]);
            expect(await journalMode(fresh)).toBeUndefined();
        } finally {
            await fresh.close();
        }
    });

    const deletePoints: [string, KillPoint, string[]][] = [
        ["after the unbind", { path: `${DRV}/vfio-pci/unbind`, data: GPU }, ["none", "vfio-pci", "vfio-pci", "vfio-pci"]],
        ["after the override", { path: `${DEV}/${GPU}/driver_override`, data: "\n" }, ["none", "(null)", "vfio-pci", "vfio-pci"]],
        ["after the first member", { path: `${DRV}/bochs-drm/bind`, data: GPU }, ["bochs-drm", "(null)", "vfio-pci", "vfio-pci"]],
    ];

    test.each(deletePoints)("delete killed %s: refresh and up from a new process converge, destroy restores the boot drivers", async (_what, after, left) => {
        const outs = (await killedChange({ connection: l.connection, phase: "delete", after, device: GPU }))!;
        expect(outs.members.map((m) => m.previousDriver)).toEqual(["bochs-drm", "snd_hda_intel"]);
        const fresh = new SshHost(l.connection);
        try {
            expect(await state(fresh)).toEqual(left);
            expect(await journalMode(fresh)).toBe("600");
            // `pulumi up --refresh`: the state still holds the binding (its delete never finished).
            const r = await read(outs.address, outs, fresh);
            expect(r.props!.members.map((m) => [m.previousDriver, m.driver])).toEqual([
                ["bochs-drm", left[0] === "none" ? null : left[0]],
                ["snd_hda_intel", "vfio-pci"],
            ]);
            expect(diff(outs.address, r.props!, outs).changes).toBe(true);
            const { outs: repaired } = await update(outs.address, r.props!, outs, fresh);
            expect(await state(fresh)).toEqual(["vfio-pci", "vfio-pci", "vfio-pci", "vfio-pci"]);
            await remove(repaired.address, repaired, fresh);
            expect(await state(fresh)).toEqual(["bochs-drm", "(null)", "snd_hda_intel", "(null)"]);
            expect(await journalMode(fresh)).toBeUndefined();
        } finally {
            await fresh.close();
        }
    });
});
