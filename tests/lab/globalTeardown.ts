// jest globalTeardown of the "lab" project: powers off the VM globalSetup booted and removes the state file.
import * as fs from "fs";
import { LabVm, killLab } from "./lab";
import { VM_GLOBAL } from "./globalSetup";
import { LAB_STATE_ENV, readLabState } from "./labState";

export default async function globalTeardown(): Promise<void> {
    const g = globalThis as Record<string, unknown>;
    const vm = g[VM_GLOBAL] as LabVm | undefined;
    if (vm) {
        await vm.stop();
        delete g[VM_GLOBAL];
    } else {
        // globalSetup ran in another module registry: fall back to the state file.
        const st = readLabState();
        if ("pid" in st) killLab(st);
    }
    const file = process.env[LAB_STATE_ENV];
    if (file) fs.rmSync(file, { force: true });
}
