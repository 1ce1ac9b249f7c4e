// Unit tests of the modules that do not import JupyterLab packages (which ship as ES modules), in jsdom.
module.exports = {
  testEnvironment: 'jsdom',
  roots: ['<rootDir>/test'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'test/tsconfig.json' }]
  }
};
