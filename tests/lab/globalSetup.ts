// jest globalSetup of the "lab" project: boots ONE lab VM for the whole run (see labState.ts for the worker side).
// Never throws: a missing image becomes {skip}, a failed boot {error}, and labSuite() turns those into skipped
// or failing lab suites, so the other projects' results still come out.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { bootLab, findLabImage, LabState } from "./lab";
import { LAB_STATE_ENV } from "./labState";

export const VM_GLOBAL = "__PULUMI_VFIO_LAB_VM__";

export default async function globalSetup(): Promise<void> {
    const dir = path.join(os.tmpdir(), "pulumi-vfio-lab");
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const file = path.join(dir, `state-${process.pid}.json`);
    // Workers are forked after globalSetup and inherit this.
    process.env[LAB_STATE_ENV] = file;

    let state: LabState;
    const image = findLabImage();
    if ("skip" in image) {
        state = { skip: image.skip };
    } else {
        const t0 = Date.now();
        try {
            const vm = await bootLab({ log: (m) => console.log(`[lab] ${m}`) });
            (globalThis as Record<string, unknown>)[VM_GLOBAL] = vm;
            state = vm.state();
            console.log(`[lab] VM up in ${((Date.now() - t0) / 1000).toFixed(1)} s (${vm.accel}), ssh 127.0.0.1:${vm.connection.port}`);
        } catch (e) {
            state = { error: (e as Error).message };
            console.error(`[lab] boot failed: ${(e as Error).message}`);
        }
    }
    fs.writeFileSync(file, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
}
