/**
 * Loaded into a process with `node --require dist/tests/fake/register.js` (the dynamic-provider plugin the engine
 * tests drive, a program under test): every host of that process becomes the fake machine stored in the JSON file
 * named by {@link TEST_MACHINE_ENV}, shared with the test that reads and edits it. Test-only: the package ships
 * neither this module nor the fake.
 */
import * as path from "path";
import { setHostFactory } from "../../provider/host";
import { fileBackedFakeHost } from "./host";
import { fakeLabKernel } from "./lab";

/** The environment variable naming the fake machine's state file, read by this test-only module alone. */
export const TEST_MACHINE_ENV = "PULUMI_VFIO_TEST_MACHINE";

/** This module's compiled path, for `--require`. */
export const REGISTER_MODULE = path.join(path.resolve(__dirname, "..", "..").replace(/[\\/]dist$/, ""), "dist", "tests", "fake", "register.js");

/** Point every host of this process at the fake machine in `stateFile` (one host per operation: the file changes). */
export function useFakeMachine(stateFile: string | undefined): void {
    setHostFactory(stateFile ? { make: () => fileBackedFakeHost(stateFile, fakeLabKernel), pooled: false } : undefined);
}

if (process.env[TEST_MACHINE_ENV]) useFakeMachine(process.env[TEST_MACHINE_ENV]);
