/**
 * Three suites:
 * - unit: pure logic and every resource against the in-memory fake kernel (fast);
 * - engine: the real dynamic-provider plugin driven over gRPC, against a fake kernel in a state file;
 * - lab: a real Linux kernel with an emulated IOMMU in a QEMU VM (tests/lab), one VM for the whole suite.
 */
const tsJest = ["ts-jest", { tsconfig: "tsconfig.json", isolatedModules: false, diagnostics: { warnOnly: false } }];
const common = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": tsJest },
  moduleFileExtensions: ["ts", "js", "json"],
  // A serialized provider requires "pulumi-vfio/provider"; inside jest that is this repository's source.
  moduleNameMapper: { "^pulumi-vfio/provider$": "<rootDir>/provider/index.ts", "^pulumi-vfio$": "<rootDir>/sdk/index.ts" },
  modulePathIgnorePatterns: ["<rootDir>/dist/"],
};
module.exports = {
  projects: [
    { ...common, displayName: "unit", testMatch: ["<rootDir>/tests/unit/**/*.test.ts", "<rootDir>/tests/contract/**/*.fake.test.ts"] },
    { ...common, displayName: "engine", testMatch: ["<rootDir>/tests/engine/**/*.test.ts"], setupFilesAfterEnv: ["<rootDir>/tests/setup/engine.ts"] },
    {
      ...common,
      displayName: "lab",
      testMatch: ["<rootDir>/tests/lab/**/*.lab.test.ts", "<rootDir>/tests/contract/**/*.lab.test.ts"],
      globalSetup: "<rootDir>/tests/lab/globalSetup.ts",
      globalTeardown: "<rootDir>/tests/lab/globalTeardown.ts",
      setupFilesAfterEnv: ["<rootDir>/tests/setup/lab.ts"],
    },
  ],
};
