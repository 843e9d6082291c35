<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis minScale="1e+08" styleCategories="AllStyleCategories" maxScale="0" version="3.22.16-Białowieża" hasScaleBasedVisibilityFlag="0">
  <flags>
    <Identifiable>1</Identifiable>
    <Removable>1</Removable>
    <Searchable>1</Searchable>
    <Private>0</Private>
  </flags>
  <temporal mode="0" enabled="0" fetchMode="0">
    <fixedRange>
      <start></start>
      <end></end>
    </fixedRange>
  </temporal>
  <customproperties>
    <Option type="Map">
      <Option value="Value" type="QString" name="identify/format"/>
    </Option>
  </customproperties>
  <pipe-data-defined-properties>
    <Option type="Map">
      <Option value="" type="QString" name="name"/>
      <Option name="properties"/>
      <Option value="collection" type="QString" name="type"/>
    </Option>
  </pipe-data-defined-properties>
  <pipe>
    <provider>
      <resampling maxOversampling="2" zoomedOutResamplingMethod="nearestNeighbour" enabled="false" zoomedInResamplingMethod="nearestNeighbour"/>
    </provider>
    <rasterrenderer opacity="1" band="1" nodataColor="" classificationMax="1" classificationMin="0" type="singlebandpseudocolor" alphaBand="-1">
      <minMaxOrigin>
        <limits>CumulativeCut</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.99</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <rastershader>
        <colorrampshader classificationMode="1" clip="0" minimumValue="0" colorRampType="INTERPOLATED" labelPrecision="6" maximumValue="1">
          <colorramp type="gradient" name="[source]">
            <Option type="Map">
              <Option value="0,0,4,255" type="QString" name="color1"/>
              <Option value="252,255,164,255" type="QString" name="color2"/>
              <Option value="0" type="QString" name="discrete"/>
              <Option value="gradient" type="QString" name="rampType"/>
              <Option value="0.0196078;2,2,12,255:0.0392157;5,4,23,255:0.0588235;10,7,34,255:0.0784314;16,9,45,255:0.0980392;22,11,57,255:0.117647;30,12,69,255:0.137255;38,12,81,255:0.156863;47,10,91,255:0.176471;56,9,98,255:0.196078;64,10,103,255:0.215686;73,11,106,255:0.235294;81,14,108,255:0.254902;89,16,110,255:0.27451;97,19,110,255:0.294118;105,22,110,255:0.313725;113,25,110,255:0.333333;120,28,109,255:0.352941;128,31,108,255:0.372549;136,34,106,255:0.392157;144,37,104,255:0.411765;152,39,102,255:0.431373;160,42,99,255:0.45098;168,46,95,255:0.470588;176,49,91,255:0.490196;183,53,87,255:0.509804;191,57,82,255:0.529412;198,61,77,255:0.54902;204,66,72,255:0.568627;211,71,67,255:0.588235;217,77,61,255:0.607843;223,83,55,255:0.627451;228,90,49,255:0.647059;233,97,43,255:0.666667;237,105,37,255:0.686275;241,113,31,255:0.705882;244,121,24,255:0.72549;247,130,18,255:0.745098;249,139,11,255:0.764706;250,148,7,255:0.784314;251,157,7,255:0.803922;252,166,12,255:0.823529;252,176,20,255:0.843137;251,186,31,255:0.862745;250,196,42,255:0.882353;248,205,55,255:0.901961;246,215,70,255:0.921569;244,225,86,255:0.941176;242,234,105,255:0.960784;242,242,125,255:0.980392;245,249,146,255" type="QString" name="stops"/>
            </Option>
            <prop v="0,0,4,255" k="color1"/>
            <prop v="252,255,164,255" k="color2"/>
            <prop v="0" k="discrete"/>
            <prop v="gradient" k="rampType"/>
            <prop v="0.0196078;2,2,12,255:0.0392157;5,4,23,255:0.0588235;10,7,34,255:0.0784314;16,9,45,255:0.0980392;22,11,57,255:0.117647;30,12,69,255:0.137255;38,12,81,255:0.156863;47,10,91,255:0.176471;56,9,98,255:0.196078;64,10,103,255:0.215686;73,11,106,255:0.235294;81,14,108,255:0.254902;89,16,110,255:0.27451;97,19,110,255:0.294118;105,22,110,255:0.313725;113,25,110,255:0.333333;120,28,109,255:0.352941;128,31,108,255:0.372549;136,34,106,255:0.392157;144,37,104,255:0.411765;152,39,102,255:0.431373;160,42,99,255:0.45098;168,46,95,255:0.470588;176,49,91,255:0.490196;183,53,87,255:0.509804;191,57,82,255:0.529412;198,61,77,255:0.54902;204,66,72,255:0.568627;211,71,67,255:0.588235;217,77,61,255:0.607843;223,83,55,255:0.627451;228,90,49,255:0.647059;233,97,43,255:0.666667;237,105,37,255:0.686275;241,113,31,255:0.705882;244,121,24,255:0.72549;247,130,18,255:0.745098;249,139,11,255:0.764706;250,148,7,255:0.784314;251,157,7,255:0.803922;252,166,12,255:0.823529;252,176,20,255:0.843137;251,186,31,255:0.862745;250,196,42,255:0.882353;248,205,55,255:0.901961;246,215,70,255:0.921569;244,225,86,255:0.941176;242,234,105,255:0.960784;242,242,125,255:0.980392;245,249,146,255" k="stops"/>
          </colorramp>
          <item value="0" color="#000004" alpha="255" label="0"/>
          <item value="0.0196078" color="#02020c" alpha="255" label="0.01961"/>
          <item value="0.0392157" color="#050417" alpha="255" label="0.03922"/>
          <item value="0.0588235" color="#0a0722" alpha="255" label="0.05882"/>
          <item value="0.0784314" color="#10092d" alpha="255" label="0.07843"/>
          <item value="0.0980392" color="#160b39" alpha="255" label="0.09804"/>
          <item value="0.117647" color="#1e0c45" alpha="255" label="0.1176"/>
          <item value="0.137255" color="#260c51" alpha="255" label="0.1373"/>
          <item value="0.156863" color="#2f0a5b" alpha="255" label="0.1569"/>
          <item value="0.176471" color="#380962" alpha="255" label="0.1765"/>
          <item value="0.196078" color="#400a67" alpha="255" label="0.1961"/>
          <item value="0.215686" color="#490b6a" alpha="255" label="0.2157"/>
          <item value="0.235294" color="#510e6c" alpha="255" label="0.2353"/>
          <item value="0.254902" color="#59106e" alpha="255" label="0.2549"/>
          <item value="0.27451" color="#61136e" alpha="255" label="0.2745"/>
          <item value="0.294118" color="#69166e" alpha="255" label="0.2941"/>
          <item value="0.313725" color="#71196e" alpha="255" label="0.3137"/>
          <item value="0.333333" color="#781c6d" alpha="255" label="0.3333"/>
          <item value="0.352941" color="#801f6c" alpha="255" label="0.3529"/>
          <item value="0.372549" color="#88226a" alpha="255" label="0.3725"/>
          <item value="0.392157" color="#902568" alpha="255" label="0.3922"/>
          <item value="0.411765" color="#982766" alpha="255" label="0.4118"/>
          <item value="0.431373" color="#a02a63" alpha="255" label="0.4314"/>
          <item value="0.45098" color="#a82e5f" alpha="255" label="0.451"/>
          <item value="0.470588" color="#b0315b" alpha="255" label="0.4706"/>
          <item value="0.490196" color="#b73557" alpha="255" label="0.4902"/>
          <item value="0.509804" color="#bf3952" alpha="255" label="0.5098"/>
          <item value="0.529412" color="#c63d4d" alpha="255" label="0.5294"/>
          <item value="0.54902" color="#cc4248" alpha="255" label="0.549"/>
          <item value="0.568627" color="#d34743" alpha="255" label="0.5686"/>
          <item value="0.588235" color="#d94d3d" alpha="255" label="0.5882"/>
          <item value="0.607843" color="#df5337" alpha="255" label="0.6078"/>
          <item value="0.627451" color="#e45a31" alpha="255" label="0.6275"/>
          <item value="0.647059" color="#e9612b" alpha="255" label="0.6471"/>
          <item value="0.666667" color="#ed6925" alpha="255" label="0.6667"/>
          <item value="0.686275" color="#f1711f" alpha="255" label="0.6863"/>
          <item value="0.705882" color="#f47918" alpha="255" label="0.7059"/>
          <item value="0.72549" color="#f78212" alpha="255" label="0.7255"/>
          <item value="0.745098" color="#f98b0b" alpha="255" label="0.7451"/>
          <item value="0.764706" color="#fa9407" alpha="255" label="0.7647"/>
          <item value="0.784314" color="#fb9d07" alpha="255" label="0.7843"/>
          <item value="0.803922" color="#fca60c" alpha="255" label="0.8039"/>
          <item value="0.823529" color="#fcb014" alpha="255" label="0.8235"/>
          <item value="0.843137" color="#fbba1f" alpha="255" label="0.8431"/>
          <item value="0.862745" color="#fac42a" alpha="255" label="0.8627"/>
          <item value="0.882353" color="#f8cd37" alpha="255" label="0.8824"/>
          <item value="0.901961" color="#f6d746" alpha="255" label="0.902"/>
          <item value="0.921569" color="#f4e156" alpha="255" label="0.9216"/>
          <item value="0.941176" color="#f2ea69" alpha="255" label="0.9412"/>
          <item value="0.960784" color="#f2f27d" alpha="255" label="0.9608"/>
          <item value="0.980392" color="#f5f992" alpha="255" label="0.9804"/>
          <item value="1" color="#fcffa4" alpha="255" label="1"/>
          <rampLegendSettings maximumLabel="" direction="0" suffix="" useContinuousLegend="1" orientation="2" minimumLabel="" prefix="">
            <numericFormat id="basic">
              <Option type="Map">
                <Option value="" type="QChar" name="decimal_separator"/>
                <Option value="6" type="int" name="decimals"/>
                <Option value="0" type="int" name="rounding_type"/>
                <Option value="false" type="bool" name="show_plus"/>
                <Option value="true" type="bool" name="show_thousand_separator"/>
                <Option value="false" type="bool" name="show_trailing_zeros"/>
                <Option value="" type="QChar" name="thousand_separator"/>
              </Option>
            </numericFormat>
          </rampLegendSettings>
        </colorrampshader>
      </rastershader>
    </rasterrenderer>
    <brightnesscontrast gamma="1" contrast="0" brightness="0"/>
    <huesaturation saturation="0" colorizeOn="0" colorizeGreen="128" colorizeStrength="100" grayscaleMode="0" invertColors="0" colorizeRed="255" colorizeBlue="128"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
