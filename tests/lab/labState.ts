// The worker side of the jest lab project: globalSetup.ts boots one lab VM for the whole run and writes its state
// to the file named by PULUMI_VFIO_LAB_STATE; each lab test file calls labSuite() to get a handle on it.
//
//   const { describe: labDescribe, lab } = labSuite();
//   labDescribe("IommuBinding on a real kernel", () => { test("...", async () => { await lab!.ssh([...]); }); });
//
// Without a lab (image not built, no QEMU) the suite is skipped with the reason, never passed; under CI (where
// the image is built first) that is a failure instead, and so is a VM that did not boot.
import * as fs from "fs";
import { LabClient, LabState, labHandleFromState } from "./lab";

export const LAB_STATE_ENV = "PULUMI_VFIO_LAB_STATE";

export function readLabState(): LabState {
    const file = process.env[LAB_STATE_ENV];
    if (!file) {
        return { skip: `${LAB_STATE_ENV} is not set: lab tests run in the jest "lab" project, whose globalSetup boots the VM` };
    }
    try {
        return JSON.parse(fs.readFileSync(file, "utf8")) as LabState;
    } catch (e) {
        return { error: `cannot read the lab state ${file}: ${(e as Error).message}` };
    }
}

let warned: string | undefined;

function underCi(): boolean {
    const ci = process.env.CI;
    return !!ci && !/^(0|false|no)$/i.test(ci);
}

/** `lab` is a LabHandle (a LabClient, which adds `sh`, `sshArgs` and the ssh multiplexing controls). */
export function labSuite(): { describe: jest.Describe; lab: LabClient | undefined; reason?: string } {
    const st = readLabState();
    if ("error" in st) throw new Error(`lab VM unavailable: ${st.error}`);
    if ("skip" in st) {
        if (underCi()) throw new Error(`lab unavailable under CI (build it first with \`npm run lab:build\`): ${st.skip}`);
        if (warned !== st.skip) {
            warned = st.skip;
            console.warn(`lab tests SKIPPED: ${st.skip}`);
        }
        return { describe: describe.skip, lab: undefined, reason: st.skip };
    }
    return { describe, lab: labHandleFromState(st) };
}
